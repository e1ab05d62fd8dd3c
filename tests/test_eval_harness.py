"""The evaluation harness: generation -> extraction -> sandboxed execution -> metrics, resume, ranks."""

from __future__ import annotations

import json

import pytest
from tiny_models import tiny_model, tiny_tokenizer

from xdlm_tune.evaluation import harness, load_mbpp
from xdlm_tune.evaluation.harness import EvalModel, GenerationConfig, run_evaluation
from xdlm_tune.evaluation.summary import summarize_run
from xdlm_tune.sampling import SamplerSettings


@pytest.fixture(scope="module")
def problems(benchmark_data):
    return load_mbpp(benchmark_data / "mbpp.jsonl", limit=4)


@pytest.fixture(scope="module")
def tiny():
    m = tiny_model("llama")
    m.config.is_causal = False
    return EvalModel(m.eval(), tiny_tokenizer(), "tiny", mask_id=120, shift=True)


def _rows(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_correct_answers_pass_and_wrong_ones_fail(problems, tiny, tmp_path, monkeypatch):
    """A generation that is the reference solution passes; junk fails; pass@1 counts that."""
    calls = []

    def fake(em, chunk, steps, cfg):
        calls.append((steps, [p.task_id for p in chunk]))
        return [(p.reference + "\n[DONE]\nleftover" if i % 2 == 0 else "def oops(:\n") for i, p in enumerate(chunk)], [
            steps
        ] * len(chunk)

    monkeypatch.setattr(harness, "diffusion_generations", fake)
    cfg = GenerationConfig(batch_size=4)
    path = run_evaluation([tiny], problems, steps=[8, 16], cfg=cfg, out_dir=tmp_path, progress=False)
    rows = _rows(path)
    assert len(rows) == 8 and {r["steps"] for r in rows} == {8, 16}
    assert [r["status"] for r in rows[:4]] == ["passed", "error", "passed", "error"]
    assert [r["syntax_valid"] for r in rows[:4]] == [True, False, True, False]
    assert [r["prompt"] for r in rows[:4]] == [p.prompt for p in problems]  # what the model was given
    res = summarize_run(tmp_path)
    assert all(s.pass_at_1 == 0.5 for s in res["summary"])
    assert (tmp_path / "summary.md").read_text().count(
        "| 50.0% [15.0, 85.0] | 50.0% [15.0, 85.0] | 2 | 0 | 2 | 0 |"
    ) == 2
    assert (tmp_path / "pass_at_1.png").stat().st_size > 1000


def test_interrupted_run_resumes_without_duplicates(problems, tiny, tmp_path, monkeypatch):
    seen = []

    def fake(em, chunk, steps, cfg):
        seen.extend((steps, p.task_id) for p in chunk)
        return ["x = 1\n"] * len(chunk), [steps] * len(chunk)

    monkeypatch.setattr(harness, "diffusion_generations", fake)
    cfg = GenerationConfig(batch_size=2)
    path = run_evaluation([tiny], problems, steps=[4], cfg=cfg, out_dir=tmp_path, progress=False)
    full = _rows(path)
    # Simulate an interruption: keep the first row and half of the second.
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    seen.clear()
    run_evaluation([tiny], problems, steps=[4], cfg=cfg, out_dir=tmp_path, progress=False)
    assert [t for _, t in seen] == [p.task_id for p in problems[1:]]  # only what was missing
    done = [json.loads(l) for l in path.read_text().splitlines() if l.endswith("}")]
    assert sorted(r["task_id"] for r in done) == sorted(r["task_id"] for r in full)


def test_ranks_split_the_problems_and_summary_merges_them(problems, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(
        harness, "diffusion_generations", lambda em, chunk, s, cfg: (["x = 1\n"] * len(chunk), [s] * len(chunk))
    )
    cfg = GenerationConfig(batch_size=4)
    for rank in range(2):
        run_evaluation([tiny], problems, steps=[4], cfg=cfg, out_dir=tmp_path, rank=rank, world_size=2, progress=False)
    a, b = _rows(tmp_path / "samples.rank0.jsonl"), _rows(tmp_path / "samples.rank1.jsonl")
    assert {r["task_id"] for r in a}.isdisjoint({r["task_id"] for r in b})
    assert summarize_run(tmp_path)["samples"] == len(problems)


def test_real_sampler_on_a_tiny_model_counts_budgets(problems, tiny, tmp_path):
    """No fakes: the real sampler and executor on a tiny random model (answers are junk)."""
    forwards = []
    tiny.model.register_forward_hook(lambda *a: forwards.append(1))
    cfg = GenerationConfig(sampling=SamplerSettings(gen_length=8), batch_size=4)
    path = run_evaluation([tiny], problems[:2], steps=[2, 4], cfg=cfg, out_dir=tmp_path, progress=False)
    rows = _rows(path)
    assert len(rows) == 4 and len(forwards) == 2 + 4  # one batch per budget: exactly `steps` forwards
    assert all(r["status"] in ("passed", "wrong_answer", "error", "timeout") for r in rows)


def test_cache_and_threshold_rows_carry_the_variant_and_nfe(problems, tiny, tmp_path):
    """The real sampler with a dual cache and a threshold: the row label names the variant, each
    sample records its forward passes, and the table shows their mean."""
    forwards = []
    hook = tiny.model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        settings = SamplerSettings(gen_length=8, block_length=4, cache="dual", threshold=0.01)
        cfg = GenerationConfig(sampling=settings, batch_size=2)
        rows = _rows(run_evaluation([tiny], problems[:2], steps=[8], cfg=cfg, out_dir=tmp_path, progress=False))
    finally:
        hook.remove()
    assert {r["label"] for r in rows} == {"tiny [cache=dual tau=0.01]"}
    assert all(2 <= r["nfe"] < 8 for r in rows) and len(forwards) < 8  # blocks ended early
    table = summarize_run(tmp_path)["table"]
    mean = sum(r["nfe"] for r in rows) / len(rows)
    assert table.splitlines()[0].endswith("| timeout | NFE |") and table.splitlines()[2].endswith(f"| {mean:.1f} |")


def test_the_summary_names_the_benchmark_source_and_the_sandbox_jail(tmp_path):
    """summary.md and the printed table (and so the model card, which takes summary.md) say which
    copy of the benchmark was scored and which isolation level judged the programs."""
    rows = [
        dict(label="m", steps=8, task_id="mbpp/11", status="passed", syntax_valid=True, data="shipped x", jail="bwrap"),
        dict(label="m", steps=8, task_id="mbpp/12", status="error", syntax_valid=False, data="shipped x", jail="bwrap"),
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = summarize_run(tmp_path)
    assert res["table"].endswith("\nBenchmark data: shipped x\nSandbox jail: bwrap\n")
    assert res["table"] in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())[0]["jail"] == "bwrap"
