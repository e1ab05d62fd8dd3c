"""MBPP through lm-eval (the shipped `mbpp_local` task) vs our harness, on the same generations.

A stand-in lm-eval model answers each request with a program made from the request's doc: the
dataset's reference (all must pass in both) or a broken one (none may pass in either). lm-eval
builds the prompts, cuts nothing (the stand-in stops where a model would), scores with the task's
metric (our sandboxed executor) and aggregates; our harness extracts, executes and scores itself.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from xdlm_tune.evaluation import check_generations, load_mbpp  # noqa: E402
from xdlm_tune.lm_eval import TASKS_DIR  # noqa: E402

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
    res = lm_eval.simple_evaluate(model=lm, tasks=["mbpp_local"], task_manager=manager, log_samples=True,
                                  samples={"mbpp_local": [i - 11 for i in TASK_IDS]}, confirm_run_unsafe_code=True)
    per_task = {s["doc"]["task_id"]: s["pass_at_1"] for s in res["samples"]["mbpp_local"]}
    return per_task, res["results"]["mbpp_local"]["pass_at_1,none"], lm.prompts


def _harness_scores(make, mbpp_file: Path):
    problems = load_mbpp(mbpp_file, ids=TASK_IDS)
    docs = {r["task_id"]: r for r in _records(mbpp_file)}
    records = check_generations(problems, [make(docs[int(p.task_id.split("/")[1])]) for p in problems])
    return {int(r["task_id"].split("/")[1]): float(r["status"] == "passed") for r in records}, problems


def _records(path: Path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("make,expected", [(lambda doc: doc["code"], 1.0), (broken, 0.0)], ids=["reference", "broken"])
def test_lm_eval_and_our_harness_agree_problem_by_problem(shared_data, make, expected):
    mbpp_file = shared_data / "mbpp.jsonl"
    theirs, mean, prompts = _lm_eval_scores(make, mbpp_file)
    ours, problems = _harness_scores(make, mbpp_file)
    assert sorted(theirs) == sorted(ours) == sorted(TASK_IDS)
    assert theirs == ours == {i: expected for i in TASK_IDS}
    assert mean == expected
    # The same 3-shot prompt, character for character.
    assert {int(p.task_id.split("/")[1]): p.prompt for p in problems} == prompts


def test_stock_lm_eval_mbpp_form_and_its_setup_code_gap(shared_data):
    """Our YAML keeps stock lm-eval's mbpp form; stock's tests lack test_setup_code, which task 367 needs."""
    stock_path = Path(lm_eval.__file__).parent / "tasks" / "mbpp" / "mbpp.yaml"

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    stock = yaml.load(stock_path.read_text(), Loader=Loader)
    ours = yaml.load((TASKS_DIR / "mbpp_local.yaml").read_text(), Loader=Loader)
    for key in ("doc_to_text", "output_type", "test_split", "target_delimiter", "generation_kwargs", "num_fewshot"):
        assert ours[key] == stock[key], key

    import importlib.util

    spec = importlib.util.spec_from_file_location("mbpp_local_utils", TASKS_DIR / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = next(r for r in _records(shared_data / "mbpp.jsonl") if r["task_id"] == 367)
    stock_target = "\n".join(doc["test_list"][:3])
    assert utils.pass_at_1([stock_target], [doc["code"]]) == 0.0
    assert utils.pass_at_1([utils.mbpp_reference(doc)], [doc["code"]]) == 1.0
    ds = utils.mbpp_dataset(mbpp_path=str(shared_data / "mbpp.jsonl"), version=1.0, pretrained="ignored")
    assert [len(ds[s]) for s in ("prompt", "test", "validation", "train")] == [3, 500, 90, 374]
    assert ds["prompt"]["task_id"] == [2, 3, 4]
    with pytest.raises(ValueError, match="mbpp_path=/path/to/mbpp.jsonl"):
        utils.mbpp_dataset(mbpp_path="/nonexistent/mbpp.jsonl")
