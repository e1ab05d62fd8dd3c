"""One sampling contract (issue #25): for every shipped recipe, each surface that samples sees the same
``SamplerSettings``: `xdlm-tune run`'s MBPP eval (``Recipe.sampler_settings``), `xdlm-tune eval` with no
sampler flags on the run, the lm-eval model ``xdlm`` with no sampler model_args, and the exported model's
``diffusion_generate()`` with no arguments; gen-PPL (the genppl CLI, the recipe's genppl task, the sweep)
measures with the same length, budget and trained k / schedule / eps under its stated protocol.

The expected values are spelled out here from the recipe files' own keys, not from the code under test.
Planted: the export dropped ``cache`` (``_settings`` without the recipe's choices) -> the export row
differs; genppl kept the recipe's temperature -> the protocol assertion fails; the CLI parser defaulted
``--gen-length`` to 256 -> the eval row differs for the recipes whose gen_length is not 256 (demo)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from tiny_models import save_tiny_model

from xdlm_tune.config import load_recipe
from xdlm_tune.config.sampler import SETTING_NAMES, SamplerSettings
from xdlm_tune.config.shipped import names
from xdlm_tune.evaluation.entry import build_parser, cli_settings
from xdlm_tune.evaluation.genppl import entry as genppl_run
from xdlm_tune.evaluation.genppl.metrics import genppl_settings
from xdlm_tune.evaluation.harness import EvalModel
from xdlm_tune.export.export import _settings
from xdlm_tune.export.hub_model import XDLMForCausalLM

RECIPES = [*names("recipes").split(", "), "demo"]


def recipe_of(name: str):
    if name == "demo":
        from xdlm_tune.workflows.demo import load_demo

        demo = load_demo()
        return load_recipe(demo.recipe, demo.overrides)
    return load_recipe(name)


def expected(recipe) -> SamplerSettings:
    """The settings as the recipe's YAML keys state them (every field named)."""
    ev, d = recipe.eval, recipe.diffusion
    return SamplerSettings(
        steps=ev.steps[0],
        gen_length=ev.gen_length,
        block_length=ev.block_length,
        sampler=ev.sampler,
        temperature=ev.temperature,
        top_p=ev.top_p,
        k=d.k,
        schedule=d.schedule,
        eps=d.eps,
        revise_prompt=ev.revise_prompt,
        final_step=ev.final_step,
        cache=ev.cache,
        refresh=ev.refresh,
        refresh_every=ev.refresh_every,
        threshold=ev.threshold,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from xdlm_tune.model import prepare_model

    path = save_tiny_model(tmp_path_factory.mktemp("tiny"))
    return prepare_model(str(path), kind="causal")


@pytest.mark.parametrize("name", RECIPES)
def test_every_surface_samples_with_the_recipe_settings(name, tiny):
    recipe = recipe_of(name)
    want = expected(recipe)
    em = EvalModel(tiny.model, tiny.tokenizer, "run", mask_id=tiny.mask_id, settings=recipe.sampler_settings())
    seen = {"run's MBPP eval": recipe.sampler_settings()}
    ap = build_parser("mbpp")
    seen["xdlm-tune eval (no flags)"] = cli_settings(ap, ap.parse_args([]), em)[0]
    d = recipe.diffusion
    block = _settings(
        mask_id=tiny.mask_id,
        k=d.k,
        shift=False,
        schedule=d.schedule,
        eps=d.eps,
        recipe=recipe.to_dict(),
        generation=None,
    )
    export = SimpleNamespace(config=SimpleNamespace(xdlm=block))
    seen["export diffusion_generate()"] = XDLMForCausalLM.sampler_settings(export)
    try:
        from xdlm_tune.lm_eval.model import XDLMLM
    except ImportError:  # lm-eval is an extra
        XDLMLM = None
    if XDLMLM is not None:
        seen["lm-eval xdlm"] = XDLMLM(pretrained=em, device="cpu").sampling
    for where, got in seen.items():
        assert got == want, f"{name}: {where} samples with {got}, the recipe says {want}"

    # gen-PPL: the same length, budget and training, under its protocol (exact reverse steps, T = 1, one block)
    from xdlm_tune.workflows.sweep import build_parser as sweep_parser
    from xdlm_tune.workflows.sweep import run_settings

    sweep_args = sweep_parser().parse_intermixed_args(["recipe.yaml", "--k", str(d.k)])  # run_settings reads flags

    gp = genppl_run.build_parser()
    measured = {
        "genppl task": genppl_settings(recipe.sampler_settings()),
        "genppl CLI (no flags)": genppl_run.cli_settings(gp.parse_args([]), em)[0],
        "sweep (no flags)": run_settings(sweep_args, recipe)[0],
    }
    for where, got in measured.items():
        shared = {f: getattr(got, f) for f in ("steps", "gen_length", "k", "schedule", "eps")}
        assert shared == {f: getattr(want, f) for f in shared}, (name, where)
        assert (got.sampler, got.temperature, got.top_p, got.block_length) == ("ancestral", 1.0, 1.0, None), where
        assert (got.cache, got.threshold, got.revise_prompt, got.final_step) == ("none", None, False, "none"), where
    assert len(set(measured.values())) == 1


def test_diffusion_generate_keywords_are_replace_with_the_dream_aliases():
    block = {"mask_id": 3, "sampler": SamplerSettings(steps=8, gen_length=16, k=0.2).to_dict()}
    export = SimpleNamespace(config=SimpleNamespace(xdlm=block))
    got = XDLMForCausalLM.sampler_settings(export, max_new_tokens=32, alg="confidence", steps=16)
    assert got == SamplerSettings(steps=16, gen_length=32, sampler="confidence", k=0.2)
    with pytest.raises(TypeError, match="same setting"):
        XDLMForCausalLM.sampler_settings(export, max_new_tokens=32, gen_length=16)
    with pytest.raises(TypeError, match="unknown sampler setting 'stepz'"):
        XDLMForCausalLM.sampler_settings(export, stepz=3)
    with pytest.raises(ValueError, match="steps=64"):  # checked: more passes than tokens
        XDLMForCausalLM.sampler_settings(export, steps=64)


def test_a_format_1_export_block_reads_as_the_same_settings():
    from xdlm_tune.config.sampler import settings_of_export

    old = {
        "k": 0.3,
        "schedule": "cosine",
        "eps": 0.01,
        "mask_id": 5,
        "generation": {"alg": "xdlm", "max_new_tokens": 64, "steps": 16, "block_length": 32, "temperature": 0.0},
    }
    assert settings_of_export(old) == SamplerSettings(
        steps=16, gen_length=64, block_length=32, sampler="xdlm", k=0.3, schedule="cosine", eps=0.01
    )
    new = {"mask_id": 5, "sampler": settings_of_export(old).to_dict()}
    assert settings_of_export(new) == settings_of_export(old)


def test_one_definition_per_field_default_and_doc():
    """No other dataclass or function declares a sampler field with a default of its own: the recipe's
    sections, BoundSettings, export_model and the schedule take them from SamplerSettings (checked on the
    source: a literal default for a field of that name is a copy). Planted: `eps: float = 1e-3` back in
    likelihood.BoundSettings -> named here."""
    import ast
    from pathlib import Path

    import xdlm_tune

    root = Path(xdlm_tune.__file__).parent
    # not sampler settings: the core demo's training length and k, `xdlm-tune run`'s closing sample of the export
    allowed = {"workflows/core_demo.py": {"steps", "k"}, "workflows/pipeline.py": {"steps"}}
    copies = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root))
        if rel == "config/sampler.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            pairs = []
            if isinstance(node, ast.ClassDef):
                fields = [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
                pairs = [(n.target.id, n.value) for n in fields]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                pairs = list(zip((a.arg for a in args), defaults + node.args.kw_defaults))
            for name, value in pairs:
                if name in SETTING_NAMES and isinstance(value, ast.Constant) and value.value is not None:
                    if name not in allowed.get(rel, ()):
                        copies.append(f"{rel}:{value.lineno} {name} = {value.value!r}")
    assert copies == []
    defaults = {f.name: f.default for f in dataclasses.fields(SamplerSettings)}
    from xdlm_tune.config import DiffusionConfig, EvalConfig

    assert {n: getattr(EvalConfig(), n) for n in EvalConfig.SAMPLER_FIELDS} == {
        n: defaults[n] for n in EvalConfig.SAMPLER_FIELDS
    }
    assert (DiffusionConfig().k, DiffusionConfig().schedule, DiffusionConfig().eps) == (0.1, "linear", 1e-3)


def test_the_cli_flags_override_the_models_settings(tiny):
    """Every sampler flag given to `xdlm-tune eval` replaces the model's own value, the rest stay."""
    own = SamplerSettings(steps=8, gen_length=16, block_length=8, k=0.3, schedule="cosine", eps=0.01)
    em = EvalModel(tiny.model, tiny.tokenizer, "export", mask_id=tiny.mask_id, settings=own)
    ap = build_parser("mbpp")
    flags = ["--steps", "4", "8", "--cache", "dual", "--refresh", "block", "--threshold", "0.5", "--temperature", "0.7"]
    flags += ["--top-p", "0.9", "--sampler", "xdlm", "--revise-prompt", "--refresh-every", "2", "--k", "0.2"]
    settings, budgets = cli_settings(ap, ap.parse_args(flags), em)
    assert budgets == [4, 8]
    assert settings == SamplerSettings(
        steps=4,
        gen_length=16,
        block_length=8,
        sampler="xdlm",
        temperature=0.7,
        top_p=0.9,
        k=0.2,
        schedule="cosine",
        eps=0.01,
        revise_prompt=True,
        cache="dual",
        refresh="block",
        refresh_every=2,
        threshold=0.5,
    )
    with pytest.raises(SystemExit):  # a budget that does not fit the model's blocks: a usage error
        cli_settings(ap, ap.parse_args(["--steps", "3"]), em)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(temperature="0.7"), "temperature='0.7': must be a number, got '0.7'"),
        (dict(steps=2.5), "steps=2.5: must be an integer"),
        (dict(threshold="x"), "threshold='x': must be a number or None"),
        (dict(revise_prompt=1), "revise_prompt=1: must be true or false"),
        (dict(sampler=True), "sampler=True: must be one of 'confidence', 'xdlm', 'ancestral'"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_not_a_traceback(bad, message):
    """diffusion_generate(temperature="0.7") and the like: one ValueError naming the field (planted: the type
    check removed from problems() -> a TypeError from a comparison deep inside it)."""
    with pytest.raises(ValueError) as err:
        SamplerSettings(**bad).check()
    assert message in str(err.value)
