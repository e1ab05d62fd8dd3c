"""The recipe reference (docs/recipes.md) is generated from the schema's field docstrings and kept in sync."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

from xdlm_tune.config import docs
from xdlm_tune.config.schema import DataConfig, EvalConfig

README = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def test_readme_reference_is_the_generated_one():
    text = README.read_text()
    assert docs.splice(text, docs.reference()) == text, (
        "docs/recipes.md's recipe reference is stale: run python -m xdlm_tune.config.docs --write docs/recipes.md"
    )
    assert docs.main(["--check", str(README)]) == 0


def test_every_field_has_help_and_appears_in_the_reference():
    assert docs.undocumented() == []
    ref = docs.reference()
    for key in (
        "`data.columns.messages`",
        "`eval.prompt_format`",
        "`eval.final_step`",
        "`training.resume`",
        "`deepspeed.zero_stage`",
        "`export.push_to_hub`",
    ):
        assert key in ref
    assert "merge_lora" not in ref  # no field, no documentation of it
    helps = docs.field_help(EvalConfig)
    assert helps["sampler"].startswith("`confidence`, `xdlm` or `ancestral`; null: xdlm for k > 0")
    assert "mbpp-train" in docs.field_help(DataConfig)["source"]  # a docstring wrapped over lines reads as one


def test_a_field_without_help_is_named(tmp_path, monkeypatch):
    src = tmp_path / "fake_schema.py"
    src.write_text(
        'from dataclasses import dataclass\n\n\n@dataclass\nclass Section:\n    """A section."""\n\n'
        '    documented: int = 1\n    """Has help."""\n    forgotten: bool = False  # a comment is not help\n'
    )
    spec = importlib.util.spec_from_file_location("fake_schema", src)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fake_schema", module)
    spec.loader.exec_module(module)
    assert docs.field_help(module.Section) == {"documented": "Has help."}
    assert docs.undocumented(module.Section, "section.") == ["section.forgotten"]
    assert [f.name for f in dataclasses.fields(module.Section)] == ["documented", "forgotten"]


def test_check_fails_on_a_stale_copy_and_write_repairs_it(tmp_path, capsys):
    stale = tmp_path / "README.md"
    stale.write_text(
        README.read_text().replace("| `diffusion.k` | float | `0.1` |", "| `diffusion.k` | float | `0.5` |")
    )
    assert docs.main(["--check", str(stale)]) == 1
    assert "--write" in capsys.readouterr().err
    assert docs.main(["--write", str(stale)]) == 0
    assert stale.read_text() == README.read_text()
    (tmp_path / "plain.md").write_text("no markers here\n")
    assert docs.main(["--check", str(tmp_path / "plain.md")]) == 1


def test_sampling_page_table_is_the_generated_one():
    """docs/sampling.md's settings table comes from SamplerSettings (issue #30: no option documented twice by
    hand). Planted: a changed field help in config/sampler.py -> this fails until --write is run."""
    page = README.parent / "sampling.md"
    text = page.read_text()
    assert docs.SAMPLER_BEGIN in text and docs.regenerate(text) == text, (
        "docs/sampling.md's sampler table is stale: run python -m xdlm_tune.config.docs --write docs/sampling.md"
    )
    for name in ("`max_new_tokens`", "`alg`", "`--refresh-every`", "`diffusion.eps`"):
        assert name in text
