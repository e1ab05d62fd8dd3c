"""Check that the docs' "real output of `make demo`" block (docs/demo.md) is what the demo prints,
and that the README's shortened copy is taken from it.

    python benchmarks/check_readme_demo.py                       # docs/demo.md + README vs the committed log
    python benchmarks/check_readme_demo.py runs/demo/demo.log    # ... vs the demo you just ran
    python benchmarks/check_readme_demo.py runs/demo/demo.log --update   # rewrite docs/demo.md's block

`make demo` writes its console output to runs/demo/demo.log; benchmarks/results/demo_cpu.log is the
copy the README block was pasted from (the test suite compares the two, tests/test_readme_demo.py).
Both sides are compared line by line after the same normalisation: progress bars keep only their
final state (their bar glyphs and timings dropped), and wall-clock values (seconds, tokens/s, rates)
are masked. Every other character must match, except that a number in the README may be the log's
number rounded (5.60 for 5.5989). The README shows a few of those lines (after EXCERPT_MARKER): each
must be one of the log's, in the log's order. Exit status: 0 same, 1 drift (a diff is printed),
2 no block / log.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "docs" / "demo.md"  # the whole block
FRONT = REPO / "README.md"  # a shortened copy
COMMITTED_LOG = REPO / "benchmarks" / "results" / "demo_cpu.log"
MARKER = "The real output of `make demo`"
EXCERPT_MARKER = "Shortened, from the real output of `make demo`"

# A tqdm line: "train: 100%|####| 30/30 [02:41<00:00,  5.37s/step, loss=5.7391, tok_s=111]".
_BAR = re.compile(r"^(?P<desc>[\w ]+): +(?P<pct>\d+)%\|[^|]*\| *(?P<count>\d+/\d+) *(?:\[(?P<info>[^\]]*)\])?\s*$")
# Values that depend on the machine's speed, not on the code.
_TIMING = [
    (re.compile(r"\bdone in \d+ s\b"), "done in <s> s"),
    (re.compile(r"\b[\d,]+ tokens/s\b"), "<n> tokens/s"),
    (re.compile(r"\btok_s=[\d,.]+"), "tok_s=<n>"),
]
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def readme_block(text: str, marker: str = MARKER) -> tuple[int, int]:
    """(start, end) character offsets of the demo output inside the fenced block after `marker`."""
    at = text.find(marker)
    if at < 0:
        raise LookupError(f"no paragraph starting {marker!r}")
    fence = text.find("```\n", at)
    if fence < 0:
        raise LookupError("no ``` block after the demo paragraph")
    start = fence + 4
    end = text.find("\n```", start)
    if end < 0:
        raise LookupError("the demo block in the README is not closed")
    return start, end + 1


def _bar(line: str) -> str | None:
    """A progress bar's line without its glyphs and timings, None for a bar not at its end."""
    m = _BAR.match(line)
    if m is None:
        return None
    done, total = m["count"].split("/")
    if done != total:
        return ""
    info = m["info"] or ""
    postfix = ", ".join(part.strip() for part in info.split(",")[1:])  # drop "elapsed<remaining"
    postfix = re.sub(r"^\s*[\d.]+(?:s/|)[\w/]*(?:, |$)", "", postfix)  # and the rate: "5.37s/step", "8.4it/s"
    return f"{m['desc']}: 100% {m['count']}" + (f" [{postfix}]" if postfix else "")


def normalise(text: str) -> list[str]:
    """The lines to compare: what a terminal showed, bars at their final state, timings masked."""
    out = []
    for raw in text.splitlines():
        line = next((seg for seg in reversed(raw.split("\r")) if seg.strip()), "").rstrip()
        if not line.strip():
            continue
        bar = _bar(line)
        if bar is not None:
            if not bar:  # an intermediate bar state
                continue
            line = bar
        for pattern, mask in _TIMING:
            line = pattern.sub(mask, line)
        out.append(line)
    return out


def _numbers_agree(readme: str, log: str) -> bool:
    """The README's number is the log's, or the log's rounded to the README's decimals."""
    r, v = readme.replace(",", ""), log.replace(",", "")
    if r == v:
        return True
    if "e" in r or "e" in v:
        return False
    decimals = len(r.split(".")[1]) if "." in r else 0
    if decimals >= (len(v.split(".")[1]) if "." in v else 0):
        return False  # more digits in the README than the log has: must be equal
    return abs(float(r) - float(v)) <= 0.5 * 10**-decimals + 1e-12


def lines_agree(readme: str, log: str) -> bool:
    """Same text around the numbers, and every number agrees (`_numbers_agree`)."""
    if _NUMBER.sub("#", readme) != _NUMBER.sub("#", log):
        return False
    return all(_numbers_agree(a, b) for a, b in zip(_NUMBER.findall(readme), _NUMBER.findall(log)))


def drift(readme_text: str, log_text: str) -> list[str]:
    """The differences between the README's demo block and a demo log, as diff lines ([] if none)."""
    start, end = readme_block(readme_text)
    want, got = normalise(readme_text[start:end]), normalise(log_text)
    if len(want) == len(got) and all(lines_agree(a, b) for a, b in zip(want, got)):
        return []
    return list(difflib.unified_diff(want, got, "README.md (demo block)", "demo log", lineterm="", n=1))


def excerpt_drift(front_text: str, log_text: str) -> list[str]:
    """The README's shortened block: its lines must be lines of the log, in the log's order ([] if so)."""
    start, end = readme_block(front_text, EXCERPT_MARKER)
    want, got = normalise(front_text[start:end]), normalise(log_text)
    if not want:
        return ["the README's shortened demo block is empty"]
    at = 0
    for line in want:
        while at < len(got) and not lines_agree(line, got[at]):
            at += 1
        if at == len(got):
            return [
                f"README.md (shortened demo block): {line!r} is not a line of the demo log (after the lines before it)"
            ]
        at += 1
    return []


def readme_lines(log_text: str) -> str:
    """The block for the README from a demo log: what a terminal showed, bars at their last state."""
    keep = []
    for raw in log_text.splitlines():
        line = next((seg for seg in reversed(raw.split("\r")) if seg.strip()), "").rstrip()
        if line.strip() and _bar(line) != "":
            keep.append(line)
    return "\n".join(keep) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", nargs="?", default=str(COMMITTED_LOG), help="a demo log (default: the committed one)")
    ap.add_argument("--readme", default=str(README), help="the page with the whole block (docs/demo.md)")
    ap.add_argument("--front", default=str(FRONT), help="the page with the shortened copy (README.md)")
    ap.add_argument("--update", action="store_true", help="write the log into the README's demo block")
    args = ap.parse_args(argv)
    readme, log = Path(args.readme), Path(args.log)
    if not log.is_file():
        print(f"{log} not found: run `make demo` first (it writes runs/demo/demo.log)", file=sys.stderr)
        return 2
    text = readme.read_text()
    try:
        start, end = readme_block(text)
    except LookupError as e:
        print(f"{readme}: {e}", file=sys.stderr)
        return 2
    if args.update:
        readme.write_text(text[:start] + readme_lines(log.read_text()) + text[end:])
        print(f"{readme}: demo block rewritten from {log}")
        return 0
    diff = drift(text, log.read_text())
    front = Path(args.front)
    if not diff and front.is_file():
        try:
            diff = excerpt_drift(front.read_text(), log.read_text())
        except LookupError as e:
            print(f"{front}: {e}", file=sys.stderr)
            return 2
    if diff:
        print(f"the README's demo output drifted from {log}:\n" + "\n".join(diff))
        print(
            "\nregenerate it: make demo && python benchmarks/check_readme_demo.py runs/demo/demo.log --update "
            "&& cp runs/demo/demo.log benchmarks/results/demo_cpu.log (and pick the README's shortened lines "
            "from the new block)"
        )
        return 1
    print(f"{readme.name}'s demo block and {front.name}'s shortened copy match {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
