"""Datasets and metrics of the offline lm-eval tasks shipped with xdlm-tune (``--include_path`` this folder).

lm-eval imports this file by path from the task YAMLs (``!function utils.NAME``). Data comes from
local files, never the Hub:

* ``mbpp_local``: MBPP from ``mbpp_path`` (``--metadata mbpp_path=FILE``), else the copy shipped
  with xdlm-tune (``benchmark_data/mbpp.jsonl``, sha256-checked).
  Scoring runs every program in xdlm-tune's sandboxed executor (``xdlm_tune/sandbox/``), never
  in the lm-eval process (stock lm-eval's mbpp uses HF ``evaluate``'s ``code_eval``, which runs
  the code in-process and downloads its script from the Hub).
* ``pydocs_ppl`` / ``pydocs_mc``: ``pydocs.jsonl`` beside this file (see the YAMLs).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets

from xdlm_tune.benchmark_data import shipped_path
from xdlm_tune.evaluation.tasks import MBPP_SHOT_IDS, MBPP_SPLITS
from xdlm_tune.lm_eval.model import LocalDataError
from xdlm_tune.sandbox import execute

HERE = Path(__file__).resolve().parent
MBPP_FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")


def _mbpp_file(mbpp_path: str | None) -> Path:
    if not mbpp_path:
        return shipped_path("mbpp")
    path = Path(mbpp_path)
    if not path.is_file():
        raise LocalDataError(
            f"mbpp_local: --metadata mbpp_path={mbpp_path}: no such file. Give the path of an mbpp.jsonl "
            "(google-research mbpp/mbpp.jsonl, 974 records), or leave mbpp_path out for the copy shipped with xdlm-tune"
        )
    return path


def mbpp_dataset(mbpp_path: str | None = None, **_metadata) -> datasets.DatasetDict:
    """The standard MBPP splits by task id (test 11-510, ...) plus ``prompt``: the 3 shots (tasks 2, 3, 4).

    lm-eval passes the task metadata (and the model_args) as keywords; only ``mbpp_path`` is read.
    """
    path = _mbpp_file(mbpp_path)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_id = {}
    for r in records:
        missing = [f for f in MBPP_FIELDS if f not in r]
        if missing:
            raise LocalDataError(
                f"{path}: record {r.get('task_id', '?')} has no field {missing[0]!r} "
                f"(an MBPP record needs {list(MBPP_FIELDS)})"
            )
        by_id[int(r["task_id"])] = {f: r[f] for f in MBPP_FIELDS}
    absent = [i for i in MBPP_SHOT_IDS if i not in by_id]
    if absent:
        raise LocalDataError(f"{path}: the 3-shot prompt needs MBPP tasks {MBPP_SHOT_IDS}; missing {absent}")
    splits = {name: [by_id[i] for i in ids if i in by_id] for name, ids in MBPP_SPLITS.items()}
    splits["prompt"] = [{**by_id[i], "is_fewshot": True} for i in MBPP_SHOT_IDS]
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows})


def mbpp_reference(doc: dict) -> str:
    """The test code run after a generated program: ``test_setup_code`` then the three asserts.

    Stock lm-eval's mbpp target omits ``test_setup_code``; only test task 367 has one, and it needs it
    (its asserts use objects the setup builds), so stock lm-eval scores even the reference as failed there.
    """
    setup = doc.get("test_setup_code") or ""
    return (setup + "\n" if setup.strip() else "") + "\n".join(doc["test_list"][:3])


def mbpp_target(doc: dict) -> str:
    """A shot's answer (its code, then ``[DONE]``), else the tests (``mbpp_reference``), as lm-eval's mbpp."""
    return doc["code"] + "\n[DONE]" if doc.get("is_fewshot") else mbpp_reference(doc)


def pass_at_1(references: list[str], predictions: list[str], **_) -> float:
    """1.0 if the generated program passes its tests, run by xdlm-tune's sandboxed executor.

    lm-eval's mbpp semantics: the program is the generation as lm-eval hands it over (cut at the
    task's ``until``), followed by the tests.
    """
    (reference,), (prediction,) = references, predictions
    if isinstance(prediction, (list, tuple)):  # lm-eval's code_eval form: candidates per problem
        prediction = prediction[0]
    return 1.0 if execute(prediction, reference).status == "passed" else 0.0


def _pydocs() -> list[dict]:
    return [
        json.loads(line) for line in (HERE / "pydocs.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def pydocs_dataset(**_metadata) -> datasets.DatasetDict:
    """Module docstrings of the Python standard library, as one ``test`` split."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_pydocs())})


def pydocs_mc_dataset(n_choices: int = 4, **_metadata) -> datasets.DatasetDict:
    """Which module is this docstring's first paragraph from? Four module names, one right (fixed seed)."""
    rows = _pydocs()
    names = [r["module"] for r in rows]
    rng = random.Random(0)
    out = []
    for r in rows:
        wrong = rng.sample([n for n in names if n != r["module"]], int(n_choices) - 1)
        choices = wrong + [r["module"]]
        rng.shuffle(choices)
        out.append(
            {
                "module": r["module"],
                "summary": r["text"].split("\n\n")[0],
                "choices": choices,
                "label": choices.index(r["module"]),
            }
        )
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(out)})
