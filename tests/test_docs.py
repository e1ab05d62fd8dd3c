"""The front page and docs/: every relative link and anchor resolves, the README stays short, and
every page of docs/ is reachable from it.

Checked by planting: a link to a missing page, a misspelt anchor and a README padded past its
budget each make a test here fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
README_BUDGET = 300  # lines: a newcomer reads it in five minutes; the manual lives in docs/
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6}) (.*)$")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code spans removed (neither renders links)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            out.append(re.sub(r"`[^`]*`", "", line) if not _HEADING.match(line) else line)
    return out


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to hyphens,
    a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for line in _prose(path.read_text()):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto: ...
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{path.relative_to(REPO)}: {target} (no heading with that anchor)")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_page_and_a_misspelt_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Some section\n\n[ok](#some-section) [ok](b.md#b)\n")
    (tmp_path / "b.md").write_text("# B\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert broken_links(tmp_path / "a.md") == []
        (tmp_path / "a.md").write_text("# A\n\n[x](#some-sectoin) [y](c.md) `[z](d.md)`\n```\n[in code](e.md)\n```\n")
        assert broken_links(tmp_path / "a.md") == [
            "a.md: #some-sectoin (no heading with that anchor)",
            "a.md: c.md (no such file)",
        ]  # not the link in inline code, nor the one in the code block
    finally:
        REPO = saved


def test_the_readme_stays_within_its_budget_and_shows_the_train_command_on_the_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_BUDGET, (
        f"README.md has {len(lines)} lines (budget {README_BUDGET}): move detail to docs/"
    )
    first_screen = "\n".join(lines[:60])
    assert "make demo" in first_screen and "make test" in first_screen
    assert "xdlm-tune train recipes/" in first_screen


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _LINK.findall(README.read_text())}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert missing == [], f"not linked from README.md: {missing}"
