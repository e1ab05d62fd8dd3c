"""`xdlm-tune compare`: pairing, the flip sets, McNemar against scipy, and the refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from scipy.stats import binomtest

from xdlm_tune import cli
from xdlm_tune.evaluation.compare import SAMPLER_FIELDS, CompareError, compare_runs, markdown
from xdlm_tune.sampling import SamplerSettings

SAMPLER = {**dataclasses.asdict(SamplerSettings(steps=8, sampler="confidence")), "sampler": "confidence"}


def _eval_run(folder, passed: dict[int, bool], steps=(8,), label="m", **changes):
    """An eval folder: one row per (steps, problem), the way harness.run_evaluation writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    fmt = changes.pop("prompt_format", "original")
    seed = changes.pop("seed", 0)
    with (folder / "samples.jsonl").open("w") as f:
        for s in steps:
            for i, ok in passed.items():
                row = {
                    "label": label,
                    "steps": s,
                    "nfe": s,
                    "sampler": {**SAMPLER, "steps": s, **changes},
                    "prompt_format": fmt,
                    "seed": seed,
                    "batch_size": 4,
                    "task_id": f"mbpp/{i}",
                    "syntax_valid": ok or i % 2 == 0,
                    "status": "passed" if ok else "wrong_answer",
                }
                f.write(json.dumps(row) + "\n")
    return folder


# A passes 11-16; B passes 13-20: 11, 12 flip to failing, 17-20 to passing; 13-16 pass in both.
A = {i: 11 <= i <= 16 for i in range(11, 31)}
B = {i: 13 <= i <= 20 for i in range(11, 31)}


def test_known_flip_sets_paired_difference_and_mcnemar(tmp_path):
    (r,) = compare_runs(_eval_run(tmp_path / "a", A), _eval_run(tmp_path / "b", B))
    m = r["metrics"]["pass@1"]
    assert r["n"] == 20 and (m["a"]["count"], m["b"]["count"]) == (6, 8)
    assert m["a_only"] == ["mbpp/11", "mbpp/12"] and m["b_only"] == ["mbpp/17", "mbpp/18", "mbpp/19", "mbpp/20"]
    assert m["diff"] == pytest.approx(0.1)
    assert m["mcnemar_p"] == pytest.approx(binomtest(2, 6, 0.5).pvalue)
    low, high = m["diff_ci"]
    assert low < 0.1 < high and low < 0  # 2 against 4 flips out of 20: no evidence either way
    table = markdown([r])
    assert "| pass@1 | 30.0% [" in table and "+10.0 pts [" in table and "| 2 | 4 | 0.688 |" in table
    assert "* pass@1: only A: mbpp/11, mbpp/12; only B: mbpp/17, mbpp/18, mbpp/19, mbpp/20" in table


def test_a_run_against_itself_has_no_flips(tmp_path):
    (r,) = compare_runs(_eval_run(tmp_path / "a", A), _eval_run(tmp_path / "b", A, seed=1))
    m = r["metrics"]["pass@1"]
    assert (m["a_only"], m["b_only"], m["mcnemar_p"], m["diff_ci"]) == ([], [], 1.0, (0.0, 0.0))
    assert r["notes"] == {"seed": "A 0, B 1"}  # reported, not refused


@pytest.mark.parametrize(
    "changes,setting,words",
    [
        ({"prompt_format": "opencompass"}, "prompt_format", 'A "original", B "opencompass"'),
        ({"temperature": 0.7}, "temperature", "A 0.0, B 0.7"),
        ({"k": 0.0}, "k", "A 0.1, B 0.0"),
        ({"cache": "dual"}, "cache", 'A "none", B "dual"'),
        ({"gen_length": 128}, "gen_length", "A 256, B 128"),
    ],
)
def test_refuses_runs_whose_settings_differ_unless_allowed(tmp_path, changes, setting, words):
    a, b = _eval_run(tmp_path / "a", A), _eval_run(tmp_path / "b", B, **changes)
    with pytest.raises(CompareError, match=f"{setting}: {words}") as e:
        compare_runs(a, b)
    assert f"--allow-different {setting}" in str(e.value)
    (r,) = compare_runs(a, b, allow=[setting])
    assert setting in r["allowed_differences"] and r["n"] == 20


def test_refuses_other_problems_and_other_budgets_listing_each_difference(tmp_path):
    a = _eval_run(tmp_path / "a", A)
    fewer = _eval_run(tmp_path / "b", {i: v for i, v in B.items() if i not in (29, 30)} | {31: True})
    with pytest.raises(CompareError, match="problems: only in A: mbpp/29, mbpp/30; only in B: mbpp/31"):
        compare_runs(a, fewer)
    (r,) = compare_runs(a, fewer, allow=["problems"])
    assert r["n"] == 18  # only the shared problems are paired
    other = _eval_run(tmp_path / "c", B, steps=(16,), temperature=0.5)
    with pytest.raises(CompareError) as e:
        compare_runs(a, other)
    assert "steps: A 8, B 16" in str(e.value) and "temperature: A 0.0, B 0.5" in str(e.value)
    assert "--allow-different steps temperature" in str(e.value)
    with pytest.raises(CompareError, match="unknown"):
        compare_runs(a, other, allow=["colour"])


def test_pairs_every_shared_step_budget(tmp_path):
    res = compare_runs(_eval_run(tmp_path / "a", A, steps=(8, 16)), _eval_run(tmp_path / "b", B, steps=(16, 8)))
    assert [(r["a"]["steps"], r["b"]["steps"]) for r in res] == [(8, 8), (16, 16)]
    (only16,) = compare_runs(tmp_path / "a", tmp_path / "b", steps=[16])
    assert only16["a"]["steps"] == 16


def test_one_model_at_two_budgets_pairs_with_steps_a_and_b(tmp_path):
    run = _eval_run(tmp_path / "a", A, steps=(4, 8))
    with pytest.raises(CompareError, match="steps: A 4, B 8"):
        compare_runs(run, run, steps_a=[4], steps_b=[8])
    (r,) = compare_runs(run, run, steps_a=[4], steps_b=[8], allow=["steps"])
    assert (r["a"]["steps"], r["b"]["steps"], r["metrics"]["pass@1"]["a_only"]) == (4, 8, [])


def test_the_sampler_fields_are_sampler_settings_fields():
    assert SAMPLER_FIELDS == tuple(f.name for f in dataclasses.fields(SamplerSettings) if f.name != "steps")


def _genppl_run(folder, nll, tokens, compiles, prefix="p", k=0.1):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "samples_genppl.jsonl").open("w") as f:
        for i, (v, t, c) in enumerate(zip(nll, tokens, compiles)):
            row = dict(label=f"k={k:g}", steps=16, index=i, prefix=f"{prefix}{i}", text="x", ended=True)
            row.update(nll=v, tokens=t, entropy=1.0 + i / 10, compiles=c, sampler={**SAMPLER, "steps": 16, "k": k})
            f.write(json.dumps(row) + "\n")
    return folder


def test_genppl_runs_pair_prompt_by_prompt(tmp_path):
    a = _genppl_run(tmp_path / "a", [40.0, 30, 20, 60], [10, 10, 5, 20], [False, True, False, False], k=0.0)
    b = _genppl_run(tmp_path / "b", [20.0, 30, 10, 30], [10, 10, 5, 20], [True, True, False, False], k=0.1)
    with pytest.raises(CompareError, match="k: A 0.0, B 0.1"):
        compare_runs(a, b)
    (r,) = compare_runs(a, b, allow=["k"])
    g = r["metrics"]["gen-PPL"]
    assert g["a"]["value"] == pytest.approx(math.exp(150 / 45)) and g["ratio"] == pytest.approx(math.exp(-60 / 45))
    assert r["metrics"]["compiles"]["b_only"] == ["0"] and r["metrics"]["entropy"]["diff"] == 0.0
    _genppl_run(tmp_path / "c", [20.0, 30, 10, 30], [10, 10, 5, 20], [True] * 4, prefix="q", k=0.0)
    with pytest.raises(CompareError, match="problems: the prompts differ at indices 0, 1, 2, 3"):
        compare_runs(a, tmp_path / "c")


def test_cli_prints_the_table_writes_json_and_refuses_in_one_paragraph(tmp_path, capsys):
    a, b = _eval_run(tmp_path / "a", A), _eval_run(tmp_path / "b", B)
    assert cli.main(["compare", str(a), str(b), "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "| pass@1 | 30.0% [" in out and json.loads((tmp_path / "cmp.json").read_text())[0]["n"] == 20
    c = _eval_run(tmp_path / "c", B, prompt_format="lm-eval")
    assert cli.main(["compare", str(a), str(c)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xdlm-tune compare: refusing to pair") and "Traceback" not in err
    assert cli.main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_committed_result_folders_give_the_readme_output(monkeypatch):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # relative paths, as the README shows them
    demo = Path("benchmarks/results/compare_demo")
    with pytest.raises(CompareError, match='sampler: A "confidence", B "xdlm"'):
        compare_runs(demo / "confidence", demo / "xdlm")
    by_sampler = compare_runs(demo / "confidence", demo / "xdlm", steps=[8], allow=["sampler"])
    by_steps = compare_runs(demo / "xdlm", demo / "xdlm", steps_a=[4], steps_b=[8], allow=["steps"])
    assert by_steps[0]["metrics"]["syntax valid"]["b_only"] == ["HumanEval/0"]
    readme = (repo / "docs" / "evaluation.md").read_text()
    for res, name in ((by_sampler, "compare_sampler.json"), (by_steps, "compare_steps.json")):
        assert markdown(res) in readme
        assert json.loads((demo / name).read_text()) == json.loads(json.dumps(res))
