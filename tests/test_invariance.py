"""`xdlm-tune eval --check-invariance`: at temperature 0 the answers do not depend on the batch
size, left padding or an exact cache setting; at temperature > 0 the exact caches still match and
the batch-size check is reported as not claimed. On a tiny model and on the LLaDA / Dream fixtures."""

from __future__ import annotations

import json

import pytest
from native_bases import dream_base, llada_base
from tiny_models import save_tiny_model

from xdlm_tune.evaluation.entry import eval_main

pytestmark = pytest.mark.usefixtures("one_thread")


def _padded(variant: str) -> int:
    return int(variant.split("left padding: ")[1].split()[0])


def _check(model, out, benchmark_data, *extra):
    rc = eval_main(
        [
            "--data",
            str(benchmark_data / "mbpp.jsonl"),
            "--limit",
            "9",  # batch 8 plus one: prompts of several lengths, so rows are left-padded
            "--model",
            str(model),
            "--steps",
            "4",
            "--gen-length",
            "8",
            "--block-length",
            "4",
            "--check-invariance",
            "--out",
            str(out),
            *extra,
        ]
    )
    return rc, json.loads((out / "invariance.json").read_text()), (out / "summary.md").read_text()


def test_greedy_answers_are_invariant_on_a_tiny_model(tmp_path, benchmark_data):
    rc, body, summary = _check(save_tiny_model(tmp_path / "tiny"), tmp_path / "ev", benchmark_data)
    checks = {c["name"]: c for c in body["checks"]}
    assert rc == 0 and set(checks) == {"batch size", "cache=prefix", "cache=dual"}
    assert all(c["claimed"] and c["identical"] for c in checks.values())
    assert _padded(checks["batch size"]["variant"]) >= 4  # the check did exercise left padding
    assert "Invariances checked (answer token ids at 4 steps, temperature 0.0, seed 0):" in summary
    assert "* cache=dual refresh_every=1, batch 8 vs uncached, batch 1: identical" in summary


def test_sampled_answers_keep_the_exact_caches_and_report_the_batch_size(tmp_path, benchmark_data):
    model = save_tiny_model(tmp_path / "tiny")
    rc, body, summary = _check(model, tmp_path / "ev", benchmark_data, "--temperature", "1.0", "--seed", "3")
    checks = {c["name"]: c for c in body["checks"]}
    assert rc == 0 and not checks["batch size"]["claimed"] and "one generator per sampler call" in summary
    assert checks["cache=prefix"]["identical"] and checks["cache=dual"]["identical"]
    assert checks["cache=dual"]["reference"] == "uncached, batch 8"


# Short code prompts of different lengths: through the randomly initialised fixtures they give
# answers that differ from prompt to prompt (3-shot MBPP prompts give every problem the same one),
# so a padding or cache leak shows.
PROMPTS = [
    "def add(a, b):",
    "x = 1",
    "import os\nprint(os.getcwd())\n# list the files",
    "class A:\n    pass",
    "for i in range(10):",
    "return x + y * 2",
    "assert f(3) == 9",
    "while True: break",
    "y",
]


@pytest.mark.parametrize("base", [llada_base, dream_base], ids=["llada", "dream"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_native_fixtures_keep_every_claimed_invariance(tmp_path, base, temperature):
    from xdlm_tune.evaluation.harness import EvalModel, GenerationConfig, diffusion_answer_ids
    from xdlm_tune.evaluation.invariance import check_invariance
    from xdlm_tune.evaluation.tasks import Problem
    from xdlm_tune.model import prepare_model
    from xdlm_tune.sampling import SamplerSettings

    prepared = prepare_model(str(base(tmp_path)), kind="diffusion")
    em = EvalModel(prepared.model.eval(), prepared.tokenizer, "base", mask_id=prepared.mask_id, shift=prepared.shift)
    problems = [Problem("mbpp", f"p/{i}", text, "", "") for i, text in enumerate(PROMPTS)]
    sampling = SamplerSettings(gen_length=8, block_length=4, sampler="xdlm", temperature=temperature)
    cfg = GenerationConfig(sampling=sampling, batch_size=4, seed=5)
    answers = diffusion_answer_ids(em, problems, 4, cfg)[0]
    assert len({tuple(a) for a in answers}) >= 4  # answers that depend on the prompt: a leak would show
    checks = {c.name: c for c in check_invariance(em, problems, 4, cfg)}
    assert _padded(checks["batch size"].variant) >= 6
    for c in checks.values():
        assert c.identical or not c.claimed, c
    assert checks["batch size"].claimed == (temperature == 0)


def test_summary_says_when_nothing_was_checked(tmp_path):
    from xdlm_tune.evaluation.invariance import summary_section

    assert summary_section(tmp_path).startswith("Invariances: not checked for this run")
