"""Turn generated text into a program: stop strings, markdown fences, where a completion ends."""

from __future__ import annotations

import re
import textwrap
from typing import Sequence

MBPP_STOP = ("[DONE]",)
# The Codex paper's stop sequences (a new top-level statement ends the function), plus a
# closing markdown fence and top-level decorators.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nif", "\nprint", "\n```")

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def truncate(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest of ``stops`` (all of it if none occurs)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def strip_fences(text: str) -> str:
    """The first ```-fenced block's body if there is one (an unclosed fence runs to the end)."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def extract_mbpp(generation: str) -> str:
    """The program in an MBPP generation: up to ``[DONE]``, unfenced, dedented."""
    text = truncate(generation, MBPP_STOP)
    if text.lstrip().startswith("[BEGIN]"):  # the model repeated the prompt's last marker
        text = text.lstrip()[len("[BEGIN]") :]
    return textwrap.dedent(strip_fences(text)).strip("\n") + "\n"


def extract_mbpp_lm_eval(generation: str) -> str:
    """lm-evaluation-harness's ``mbpp`` task: the raw generation up to ``[DONE]`` (its ``until``), no
    other processing."""
    return truncate(generation, MBPP_STOP)


def _opencompass_patterns() -> list[str]:
    """OpenCompass ``MBPPEvaluator._process_answer``'s patterns, in its order (first match wins)."""
    begins, ends = (r"\[BEGIN\]", "BEGIN"), (r"\[DONE\]", "DONE")
    bodies = (r"\s*'(.*)'\s*", r"\s*'(.*)\s*", r"\s*(.*)\s*")  # quoted, opening quote only, bare
    patterns = [b + body + e for body in bodies for e in ends for b in begins]
    return patterns + [
        r"```python\s*(.*)\s*```",
        r"```\s*(.*)\s*```",
        r"```python\s*(.*)\s*$",
        r"```\s*(.*)\s*$",
        r"(.*)\s*```.*",
        r"\[BEGIN\]\s*'(.*)",
        r"\[BEGIN\](.*)",
        r"'(.*)'\s*\[DONE\]",
    ]


_OPENCOMPASS = [re.compile(p, re.DOTALL) for p in _opencompass_patterns()]
_OPENCOMPASS_DONE = re.compile(r"'?\s*\[?DONE\]?")


def extract_mbpp_opencompass(generation: str) -> str:
    """OpenCompass's MBPP answer extraction (``mbpp_gen_830460``'s ``MBPPEvaluator``): the first
    matching [BEGIN]/[DONE]/quote/fence pattern's body, cut at a fence and at DONE, ``\\_`` -> ``_``,
    stripped, one surrounding quote removed. (The shots quote their code: ``'...' [DONE]``.)"""
    text = generation
    for pattern in _OPENCOMPASS:
        match = pattern.search(text)
        if match:
            text = match.group(1)
            break
    text = text.split("```")[0]
    text = _OPENCOMPASS_DONE.split(text)[0]
    text = text.replace("\\_", "_").strip()
    if text.startswith("'"):
        text = text[1:]
    if text.endswith("'"):
        text = text[:-1]
    return text


def extract_humaneval(completion: str) -> str:
    """The function body in a HumanEval completion: cut at the next top-level statement."""
    return truncate(completion, HUMANEVAL_STOP).rstrip() + "\n"


def syntax_valid(program: str) -> bool:
    """Does ``program`` compile? (Compiling runs nothing; it also catches what ast.parse lets
    through, such as ``return`` outside a function.)"""
    try:
        compile(program, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True
