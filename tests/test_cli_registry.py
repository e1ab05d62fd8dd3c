"""The command line: one registry, the demo's settings as data, shipped recipes found from any folder."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from xdlm_tune import cli
from xdlm_tune.config import RecipeError, load_recipe
from xdlm_tune.config.shipped import FOLDERS, find_file, recipes_main, shipped_files
from xdlm_tune.workflows.demo import load_demo

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_is_a_main_with_its_own_help(name, capsys):
    module, func = cli.COMMANDS[name][0].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    assert f"xdlm-tune {name}" in capsys.readouterr().out


def test_top_level_help_lists_every_command_and_refuses_unknown_ones(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"  {name} " in out for name in cli.COMMANDS)
    with pytest.raises(SystemExit) as e:
        cli.main(["trian"])
    assert e.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_the_checkout_folders_are_the_package_data():
    for folder, home in FOLDERS.items():
        assert (REPO / folder).resolve() == home.resolve()
        assert [p.name for p in shipped_files(folder)] == sorted(p.name for p in (REPO / folder).iterdir())


def test_demo_settings_are_a_shipped_recipe_plus_overrides(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing beside it: the benchmarks are the shipped copies
    demo = load_demo()
    assert demo.recipe == FOLDERS["recipes"] / "smollm2-135m-xdlm-lora.yaml"
    recipe = load_recipe(demo.recipe, demo.overrides)
    assert (recipe.training.output_dir, recipe.training.max_steps, recipe.eval.steps) == ("runs/demo", 30, [8, 16])
    assert recipe.eval.data_dir is None and recipe.training.resume == "latest"


def test_shipped_recipes_and_configs_resolve_from_any_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for name in (
        "recipes/llama3-8b-xdlm-lora-zero3.yaml",
        "llama3-8b-xdlm-lora-zero3.yaml",
        "llama3-8b-xdlm-lora-zero3",
    ):
        recipe = load_recipe(name)
        assert recipe.deepspeed.config == "deepspeed_configs/zero3.json"
        assert recipe.deepspeed.resolve()["zero_optimization"]["stage"] == 3
    with pytest.raises(RecipeError, match="shipped recipes: .*smollm2-135m-xdlm-lora.yaml"):
        load_recipe("recipes/nope.yaml")
    assert find_file("elsewhere/llama3-8b-xdlm-lora-zero3.yaml", "recipes") is None  # only bare or recipes/ names
    mine = tmp_path / "recipes" / "smollm2-135m-xdlm-lora.yaml"
    mine.parent.mkdir()
    mine.write_text("diffusion:\n  k: 0.5\n")
    assert load_recipe("recipes/smollm2-135m-xdlm-lora.yaml").diffusion.k == 0.5  # the user's file wins
    with pytest.raises(RecipeError, match="shipped configs: .*zero3.json"):
        load_recipe(None, ["deepspeed.config=deepspeed_configs/zero9.json"]).deepspeed.resolve()
    assert recipes_main(["accelerate_multi_gpu"]) == 0
    assert capsys.readouterr().out.strip() == str(FOLDERS["deepspeed_configs"] / "accelerate_multi_gpu.yaml")
    assert recipes_main(["nope"]) == 2
