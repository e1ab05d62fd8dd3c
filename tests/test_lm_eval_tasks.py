"""The shipped lm-eval tasks. MBPP through lm-eval (`mbpp_local`) vs our harness, on the same generations.

A stand-in lm-eval model answers each request with a program made from the request's doc: the
dataset's reference (all must pass in both) or a broken one (none may pass in either). lm-eval
builds the prompts, cuts nothing (the stand-in stops where a model would), scores with the task's
metric (our sandboxed executor) and aggregates; our harness extracts, executes and scores itself.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from xdlm_tune.evaluation import check_generations, load_mbpp  # noqa: E402
from xdlm_tune.lm_eval.entry import TASKS_DIR  # noqa: E402

# Test-split problems 11-20 and 367 (the one whose tests need test_setup_code).
TASK_IDS = list(range(11, 21)) + [367]


class Replay(LM):
    """An lm-eval model that writes, for each MBPP request, ``make(doc)``; it refuses likelihood requests."""

    def __init__(self, make):
        super().__init__()
        self.make, self.prompts = make, {}

    def generate_until(self, requests):
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            assert gen_kwargs["until"] == ["[DONE]"] and gen_kwargs["do_sample"] is False
            self.prompts[req.doc["task_id"]] = context
            out.append(self.make(req.doc))
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("mbpp is a generation task")

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError("mbpp is a generation task")


def broken(doc) -> str:
    """Wrong answers: every function redefined to return None; every third problem a syntax error."""
    if doc["task_id"] % 3 == 0:
        return doc["code"] + "\n)"
    names = re.findall(r"^def (\w+)", doc["code"], re.M)
    return doc["code"] + "".join(f"\n\ndef {n}(*args, **kwargs):\n    return None\n" for n in names)


def _lm_eval_scores(make, mbpp_file: Path):
    lm = Replay(make)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"mbpp_path": str(mbpp_file)})
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=["mbpp_local"],
        task_manager=manager,
        log_samples=True,
        samples={"mbpp_local": [i - 11 for i in TASK_IDS]},
        confirm_run_unsafe_code=True,
    )
    per_task = {s["doc"]["task_id"]: s["pass_at_1"] for s in res["samples"]["mbpp_local"]}
    return per_task, res["results"]["mbpp_local"]["pass_at_1,none"], lm.prompts


def _harness_scores(make, mbpp_file: Path):
    problems = load_mbpp(mbpp_file, ids=TASK_IDS)
    docs = {r["task_id"]: r for r in _records(mbpp_file)}
    records = check_generations(problems, [make(docs[int(p.task_id.split("/")[1])]) for p in problems])
    return {int(r["task_id"].split("/")[1]): float(r["status"] == "passed") for r in records}, problems


def _utils():
    """The tasks' utils.py, imported by path as lm-eval does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lm_eval_tasks_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(path: Path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("make,expected", [(lambda doc: doc["code"], 1.0), (broken, 0.0)], ids=["reference", "broken"])
def test_lm_eval_and_our_harness_agree_problem_by_problem(benchmark_data, make, expected):
    mbpp_file = benchmark_data / "mbpp.jsonl"
    theirs, mean, prompts = _lm_eval_scores(make, mbpp_file)
    ours, problems = _harness_scores(make, mbpp_file)
    assert sorted(theirs) == sorted(ours) == sorted(TASK_IDS)
    assert theirs == ours == {i: expected for i in TASK_IDS}
    assert mean == expected
    # The same 3-shot prompt, character for character.
    assert {int(p.task_id.split("/")[1]): p.prompt for p in problems} == prompts


def test_stock_lm_eval_mbpp_form_and_its_setup_code_gap(benchmark_data):
    """Our YAML keeps stock lm-eval's mbpp form; stock's tests lack test_setup_code, which task 367 needs."""
    stock_path = Path(lm_eval.__file__).parent / "tasks" / "mbpp" / "mbpp.yaml"

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    stock = yaml.load(stock_path.read_text(), Loader=Loader)
    ours = yaml.load((TASKS_DIR / "mbpp_local.yaml").read_text(), Loader=Loader)
    for key in ("doc_to_text", "output_type", "test_split", "target_delimiter", "generation_kwargs", "num_fewshot"):
        assert ours[key] == stock[key], key

    utils = _utils()
    doc = next(r for r in _records(benchmark_data / "mbpp.jsonl") if r["task_id"] == 367)
    stock_target = "\n".join(doc["test_list"][:3])
    assert utils.pass_at_1([stock_target], [doc["code"]]) == 0.0
    assert utils.pass_at_1([utils.mbpp_reference(doc)], [doc["code"]]) == 1.0
    ds = utils.mbpp_dataset(mbpp_path=str(benchmark_data / "mbpp.jsonl"), version=1.0, pretrained="ignored")
    assert [len(ds[s]) for s in ("prompt", "test", "validation", "train")] == [3, 500, 90, 374]
    assert ds["prompt"]["task_id"] == [2, 3, 4]
    with pytest.raises(ValueError, match="mbpp_path=/nonexistent/mbpp.jsonl: no such file"):
        utils.mbpp_dataset(mbpp_path="/nonexistent/mbpp.jsonl")
    assert utils.mbpp_dataset()["test"]["task_id"] == ds["test"]["task_id"]  # no path: the shipped copy


class FixedLikelihood(LM):
    """An lm-eval model that scores every text -1 nat per byte (and refuses generation)."""

    def loglikelihood(self, requests):
        return [(-float(len(req.args[1].encode())), False) for req in requests]

    def loglikelihood_rolling(self, requests):
        return [-float(len(req.args[0].encode())) for req in requests]

    def generate_until(self, requests):
        raise NotImplementedError("likelihood tasks only")


@pytest.mark.slow
def test_any_task_reads_a_local_file_as_the_readme_says(tmp_path, monkeypatch):
    """The README's recipe: dataset_path json + dataset_kwargs.data_files, run from --include_path."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "my_ppl.yaml").write_text(
        "task: my_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {TASKS_DIR / 'pydocs.jsonl'}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n    aggregation: bits_per_byte\n    higher_is_better: false\n"
    )
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    res = lm_eval.simple_evaluate(model=FixedLikelihood(), tasks=["my_ppl"], task_manager=manager, limit=5)
    assert res["results"]["my_ppl"]["bits_per_byte,none"] == pytest.approx(1 / math.log(2))  # 1 nat per byte
    mc = lm_eval.simple_evaluate(
        model=FixedLikelihood(),
        tasks=["pydocs_mc"],
        limit=40,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
    )
    # Under this scorer the shortest choice wins (the first of equals), and every choice ties per byte
    # (acc_norm takes the first); the continuations are " " + module name.
    docs = _utils().pydocs_mc_dataset()["test"]
    shortest = [min(range(4), key=lambda i: len(d["choices"][i])) == d["label"] for d in docs]
    assert mc["results"]["pydocs_mc"]["acc,none"] == pytest.approx(sum(shortest) / 40)
    assert mc["results"]["pydocs_mc"]["acc_norm,none"] == pytest.approx(sum(d["label"] == 0 for d in docs) / 40)
