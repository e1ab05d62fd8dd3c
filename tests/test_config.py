"""Recipe schema: loading, overrides, validation messages, round trips, shipped recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xdlm_tune.config import Recipe, RecipeError, diff_recipes, flatten, load_recipe, save_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
DEFAULT = REPO / "recipes" / "smollm2-135m-xdlm-lora.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def error_of(path=None, overrides=()) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, list(overrides))
    return str(e.value)


# --------------------------------------------------------------------------- shipped recipes


def test_required_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    for n in (
        "smollm2-135m-xdlm-lora.yaml",
        "smollm2-135m-mdlm-lora.yaml",
        "smollm2-135m-udlm-lora.yaml",
        "llama3-8b-xdlm-lora-zero3.yaml",
        "qwen2.5-7b-xdlm-lora-zero2.yaml",
        "llada-8b-xdlm-cpt-zero2.yaml",
    ):
        assert n in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_round_trips(path, tmp_path):
    recipe = load_recipe(path)
    if recipe.deepspeed.config is not None:  # relative to the checkout root
        assert (REPO / recipe.deepspeed.config).is_file(), recipe.deepspeed.config
    back = load_recipe(save_recipe(recipe, tmp_path / "resolved.yaml"))
    assert back == recipe


def test_smollm2_variants_differ_only_in_k_and_output_dir():
    base = load_recipe(DEFAULT)
    assert base.diffusion.k == 0.1 and base.model.dtype == "float32" and base.data.source == "python-stdlib"
    for name, k in (("smollm2-135m-mdlm-lora.yaml", 0.0), ("smollm2-135m-udlm-lora.yaml", 1.0)):
        other = load_recipe(REPO / "recipes" / name)
        assert {d[0] for d in diff_recipes(base, other)} == {"diffusion.k", "training.output_dir"}
        assert other.diffusion.k == k


def test_llada_recipe_is_the_papers_run():
    r = load_recipe(REPO / "recipes" / "llada-8b-xdlm-cpt-zero2.yaml")
    assert (r.model.name_or_path, r.model.kind, r.adaptation.mask_id, r.adaptation.shift) == (
        "GSAI-ML/LLaDA-8B-Base",
        "diffusion",
        126336,
        False,
    )
    assert not r.lora.enabled and r.data.source == "HuggingFaceFW/fineweb-edu" and r.data.streaming
    assert (r.data.mode, r.data.seq_len) == ("pretrain", 4096)
    t = r.training
    assert (t.lr, t.warmup_steps, t.lr_scheduler, t.weight_decay, t.max_grad_norm) == (2e-5, 100, "constant", 0.1, 1.0)
    assert (t.per_device_batch_size, t.grad_accum, t.save_every, t.mixed_precision) == (1, 64, 600, "bf16")
    assert r.diffusion.loss_weighting == "unit" and r.deepspeed.zero_stage == 2


@pytest.mark.parametrize("name", ["llama3-8b-xdlm-lora-zero3.yaml", "qwen2.5-7b-xdlm-lora-zero2.yaml"])
def test_8b_causal_recipes(name):
    r = load_recipe(REPO / "recipes" / name)
    assert r.model.kind == "causal" and r.lora.enabled and r.training.gradient_checkpointing
    assert r.model.dtype == "bfloat16" and r.training.mixed_precision == "bf16"


# --------------------------------------------------------------------------- overrides


def test_fixed_override_names():
    r = load_recipe(DEFAULT, ["diffusion.k=0.5", "training.max_steps=2", "training.output_dir=runs/try"])
    assert r.diffusion.k == 0.5 and r.training.max_steps == 2 and r.training.output_dir == "runs/try"


def test_overrides_follow_yaml_scalar_rules():
    r = load_recipe(
        DEFAULT,
        [
            "lora.target_modules=[q_proj, v_proj]",
            "adaptation.mask_id=5",
            "adaptation.mask_id=null",
            "training.lr=2e-5",
            "diffusion.antithetic=false",
            "data.columns.text=content",
            "training.output_dir=runs/a=b",
            "--training.seed=7",
            "training.resume=latest",
            "adaptation.mask_token=[MASK]",
        ],
    )
    assert r.adaptation.mask_token == "[MASK]"  # text fields take the text as typed
    assert r.lora.target_modules == ["q_proj", "v_proj"]
    assert r.adaptation.mask_id is None  # later overrides win
    assert r.training.lr == 2e-5 and isinstance(r.training.lr, float)
    assert r.diffusion.antithetic is False and r.data.columns.text == "content"
    assert r.training.output_dir == "runs/a=b" and r.training.seed == 7 and r.training.resume == "latest"


def test_overrides_without_a_file_start_from_defaults():
    assert load_recipe() == Recipe()
    assert load_recipe(None, ["diffusion.k=1"]).diffusion.k == 1.0


@pytest.mark.parametrize(
    "item, expected",
    [
        ("diffusion.kk=0.5", "did you mean 'diffusion.k'"),
        ("difusion.k=0.5", "did you mean 'diffusion'"),
        ("training.max_step=2", "did you mean 'training.max_steps'"),
        ("data.columns.txt=a", "did you mean 'data.columns.text'"),
        ("diffusion.k.x=1", "diffusion.k is a value"),
        ("diffusion.k", "section.key=value"),
        ("max_steps=3", "did you mean 'training.max_steps'?"),  # a field without its section
        ("k=0.3", "did you mean 'diffusion.k'?"),
    ],
)
def test_bad_override_keys(item, expected):
    assert expected in error_of(DEFAULT, [item])


# --------------------------------------------------------------------------- validation


def test_unknown_keys_in_file_name_path_and_closest_key(tmp_path):
    msg = error_of(write(tmp_path, "diffusion:\n  kk: 0.5\ntrainig:\n  max_steps: 2\n"))
    assert "diffusion.kk: unknown key; did you mean 'diffusion.k'?" in msg
    assert "trainig: unknown key; did you mean 'training'?" in msg


@pytest.mark.parametrize(
    "item, expected",
    [
        ("diffusion.k=1.5", "diffusion.k: must be in [0, 1]"),
        ("diffusion.k=-0.1", "diffusion.k: must be in [0, 1]"),
        ("diffusion.eps=0", "diffusion.eps: must be in (0, 0.5)"),
        ("diffusion.eps=0.5", "diffusion.eps: must be in (0, 0.5)"),
        ("diffusion.schedule=linaer", "did you mean 'linear'"),
        ("diffusion.loss_weighting=1", "diffusion.loss_weighting: must be one of 'elbo', 'unit'"),
        ("model.kind=casual", "did you mean 'causal'"),
        ("model.dtype=bf16", "did you mean 'bfloat16'"),
        ("training.lr_scheduler=linear", "training.lr_scheduler: must be one of 'cosine', 'constant'"),
        ("training.max_steps=0", "training.max_steps: must be a positive integer"),
        ("training.per_device_batch_size=-1", "training.per_device_batch_size: must be a positive integer"),
        ("training.max_steps=2.5", "training.max_steps: expected an integer"),
        ("training.lr=fast", "training.lr: expected a number"),
        ("training.lr=0", "training.lr: must be > 0"),
        ("diffusion.antithetic=maybe", "diffusion.antithetic: expected true or false"),
        ("lora.r=0", "lora.r: must be a positive integer"),
        ("data.mode=sft", "python-stdlib is raw code"),
        ("data.seq_len=1", "data.seq_len: must be an integer >= 2"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage: must be 0, 1, 2, 3"),
        ("deepspeed.config=zero2.yaml", "must be a .json"),
        ("data.data_files=x.jsonl", "does not apply to python-stdlib"),
        ("model.name_or_path=null", "model.name_or_path: must not be null"),
        ("eval.block_length=100", "eval.block_length: must be positive and divide gen_length"),
    ],
)
def test_bad_values_name_the_field(item, expected):
    assert expected in error_of(DEFAULT, [item])


def test_cross_field_rules():
    assert "model.quantization: a quantized base can only be trained with LoRA" in error_of(
        DEFAULT, ["model.quantization=nf4", "lora.enabled=false"]
    )
    assert "already bidirectional" in error_of(
        DEFAULT, ["model.kind=diffusion", "adaptation.attention_annealing_steps=10"]
    )
    assert "only applies to data.mode: sft" in error_of(DEFAULT, ["data.max_prompt_len=10"])
    msg = error_of(
        None,
        [
            "data.source=mbpp-train",
            "data.mode=sft",
            "data.data_files=x.jsonl",
            "data.seq_len=64",
            "data.max_prompt_len=64",
        ],
    )
    assert "data.max_prompt_len: must be in [1, seq_len)" in msg
    # mbpp-train without data_files reads the mbpp.jsonl shipped with the package (issue 22)
    assert load_recipe(None, ["data.source=mbpp-train", "data.mode=sft"]).data.data_files is None


def test_eval_tasks_are_checked():
    assert "eval.tasks: must be a non-empty list of mbpp, humaneval, genppl" in error_of(
        DEFAULT, ["eval.tasks=[mbpp, gsm8k]"]
    )
    assert "eval.genppl_samples" in error_of(DEFAULT, ["eval.tasks=[genppl]", "eval.genppl_samples=0"])
    assert load_recipe(DEFAULT, ["eval.tasks=[mbpp, genppl]"]).eval.tasks == ["mbpp", "genppl"]


def test_all_errors_are_reported_at_once():
    msg = error_of(DEFAULT, ["diffusion.k=2", "training.max_steps=0", "diffusion.schedule=x"])
    assert "diffusion.k" in msg and "training.max_steps" in msg and "diffusion.schedule" in msg


def test_yaml_details(tmp_path):
    assert load_recipe(write(tmp_path, "training:\n  lr: 2e-5\ndiffusion:\n  eps: 1e-3\n")).training.lr == 2e-5
    assert "duplicate key 'k'" in error_of(write(tmp_path, "diffusion:\n  k: 0.1\n  k: 0.2\n"))
    assert "mapping of sections" in error_of(write(tmp_path, "- a\n- b\n"))
    assert "quote it" in error_of(write(tmp_path, "adaptation:\n  mask_token: [MASK]\n"))
    assert "expected a mapping" in error_of(write(tmp_path, "diffusion: 0.5\n"))
    assert "not found" in error_of(tmp_path / "missing.yaml")
    assert load_recipe(write(tmp_path, "eval:\n")) == Recipe()  # an empty section means defaults


def test_save_recipe_round_trips_non_defaults(tmp_path):
    r = load_recipe(
        DEFAULT,
        [
            "lora.target_modules=[q_proj]",
            "training.resume=true",
            "diffusion.chunk_size=512",
            "training.max_grad_norm=null",
            "data.source=json",
            "data.data_files=[a.jsonl, b.jsonl]",
        ],
    )
    assert load_recipe(save_recipe(r, tmp_path / "x" / "r.yaml")) == r
    assert flatten(r.to_dict())["data.columns.text"] == "text"


def test_deepspeed_resolve(monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths are relative to the working directory
    assert load_recipe(DEFAULT).deepspeed.resolve() is None
    ds = load_recipe(
        REPO / "recipes" / "llama3-8b-xdlm-lora-zero3.yaml", ["deepspeed.zero_stage=2"]
    ).deepspeed.resolve()
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_micro_batch_size_per_gpu"] == "auto"
    assert load_recipe(None, ["deepspeed.zero_stage=1"]).deepspeed.resolve()["zero_optimization"] == {"stage": 1}
    with pytest.raises(RecipeError, match="deepspeed.config: nope.json not found"):
        load_recipe(None, ["deepspeed.config=nope.json"]).deepspeed.resolve()


def test_lora_to_dict_matches_attach_lora():
    # read attach_lora's keyword names from its source: importing peft costs seconds
    import ast

    tree = ast.parse((REPO / "xdlm_tune" / "model" / "lora.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "attach_lora")
    kwargs = load_recipe(DEFAULT).lora.to_dict()
    assert kwargs["r"] == 16 and "enabled" not in kwargs
    assert set(kwargs) <= {a.arg for a in fn.args.kwonlyargs}
    assert load_recipe(DEFAULT, ["lora.enabled=false"]).lora.to_dict() is None


def test_schedule_names_match_the_diffusion_core():
    from xdlm_tune.config import SCHEDULES
    from xdlm_tune.diffusion import SCHEDULES as CORE

    assert tuple(SCHEDULES) == tuple(CORE)


def test_loading_a_recipe_imports_no_model_code():
    # Errors must come before any model (or torch) loads: the schema stands alone.
    code = (
        "import sys; from xdlm_tune.config import load_recipe; load_recipe(sys.argv[1]); "
        "bad = [m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(DEFAULT)], check=True, cwd=REPO)


# --------------------------------------------------------------------------- where a bad value came from


def test_bad_override_value_names_the_override_not_the_file():
    msg = error_of(DEFAULT, ["training.max_steps=abc"])
    assert "training.max_steps: expected an integer, got 'abc'" in msg
    assert "set by the command-line override 'training.max_steps=abc'" in msg
    assert DEFAULT.name not in msg  # the file is not to blame


def test_value_check_names_the_override():
    msg = error_of(DEFAULT, ["diffusion.k=2"])
    assert "diffusion.k: must be in [0, 1]" in msg and "command-line override 'diffusion.k=2'" in msg


def test_bad_values_in_a_file_name_file_and_line(tmp_path):
    path = write(tmp_path, "diffusion:\n  kk: 0.5\ntraining:\n  lr: 0.1\n  max_steps: x\n")
    msg = error_of(path)
    assert "diffusion.kk: unknown key; did you mean 'diffusion.k'?" in msg and f"set in {path}, line 2" in msg
    assert f"training.max_steps: expected an integer, got 'x' (set in {path}, line 5)" in msg
    msg = error_of(write(tmp_path, "diffusion:\n  eps: 0.7\n"))
    assert "diffusion.eps: must be in (0, 0.5)" in msg and "line 2)" in msg


def test_a_default_that_breaks_a_rule_is_named_as_the_default():
    # gen_length from the command line, steps left at its default of [32] (issue #25: block_length's one
    # default is SamplerSettings' null, one block, so it no longer breaks a rule on its own)
    msg = error_of(None, ["eval.gen_length=16"])
    assert "eval.steps: must be in [1, gen_length=16]" in msg and "(the default value)" in msg
    msg = error_of(None, ["eval.gen_length=100", "eval.block_length=256"])
    assert "eval.block_length: must be positive and divide gen_length (100)" in msg


def test_a_later_override_is_the_source_and_a_whole_section_override_owns_its_keys(tmp_path):
    path = write(tmp_path, "diffusion:\n  k: 0.5\n")
    assert "command-line override 'diffusion.k=3'" in error_of(path, ["diffusion.k=3"])
    assert "command-line override 'diffusion={k: 3}'" in error_of(path, ["diffusion={k: 3}"])
