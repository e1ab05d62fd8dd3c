"""The training loop on tiny stand-ins: exact resume, batch-geometry invariance, the held-out
ELBO, the noise, checkpoints, refusals, the CLI, and --dry-run of every shipped recipe.

Multi-process (accelerate, DeepSpeed ZeRO-2/3) and real-SmolLM2 runs are in
test_train_distributed.py (slow).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from xdlm_tune.checkpoints.protocol import CheckpointError, list_checkpoints
from xdlm_tune.config import RecipeError, load_recipe, save_recipe
from xdlm_tune.diffusion import make_schedule
from xdlm_tune.train import entry
from xdlm_tune.train.dry_run import stand_in_recipe
from xdlm_tune.train.loop import train
from xdlm_tune.train.metrics import read_metrics
from xdlm_tune.train.objective import NoiseSampler
from xdlm_tune.train.optim import lr_factor
from xdlm_tune.train.runtime import deepspeed_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
datasets.disable_progress_bars()


def make_tiny(
    workdir: Path,
    *,
    base: str = "recipes/smollm2-135m-xdlm-lora.yaml",
    tie: bool = True,
    overrides: tuple[str, ...] = (),
) -> Path:
    """A recipe file for a tiny byte-level Llama (tied head or not) on offline data, as the
    dry run builds it; `overrides` apply to the base recipe first (e.g. data.mode=sft)."""
    workdir.mkdir(parents=True, exist_ok=True)
    fake = workdir / "real-config"  # what the stand-in copies structure from
    fake.mkdir(exist_ok=True)
    (fake / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": tie}))
    recipe = load_recipe(REPO / base, [f"model.name_or_path={fake}", *overrides])
    tiny, _ = stand_in_recipe(recipe, workdir)
    return save_recipe(tiny, workdir / "tiny.yaml")


def run(recipe_file: Path, out: Path, *overrides: str):
    return train(load_recipe(recipe_file, [f"training.output_dir={out}", *overrides]))


def trainable(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "trainable.safetensors")


SHORT = (
    "training.max_steps=4",
    "training.save_every=2",
    "training.eval_every=2",
    "training.keep_last=3",
    "training.warmup_steps=1",
    "training.lr=1e-2",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """4 steps, checkpoints at 2 and 4, held-out ELBO at 0, 2, 4."""
    out = tmp_path_factory.mktemp("run") / "a"
    return run(tiny, out, *SHORT)


# --------------------------------------------------------------------------- resume


def test_resumed_run_matches_the_uninterrupted_one_exactly(uninterrupted, tiny, tmp_path, capsys):
    a = uninterrupted
    assert a.step == 4 and sorted(a.losses) == [1, 2, 3, 4] and sorted(a.evals) == [0, 2, 4]
    out = tmp_path / "b"
    shutil.copytree(a.output_dir, out)
    shutil.rmtree(out / "checkpoint-00000004")  # as if killed after the step-2 checkpoint
    capsys.readouterr()
    b = run(tiny, out, *SHORT, "training.resume=true")
    assert b.info["resumed_from"].endswith("checkpoint-00000002")
    # The done: line keeps the run's NELBO summary from step 0 (in metrics.jsonl, not in this invocation).
    assert (
        f"held-out NELBO {a.evals[0]['nelbo']:.4f} -> {b.evals[4]['nelbo']:.4f} nats/token" in capsys.readouterr().out
    )
    assert b.losses == {3: a.losses[3], 4: a.losses[4]}  # bit for bit
    assert b.evals[4] == a.evals[4]
    wa, wb = trainable(a.checkpoint), trainable(b.checkpoint)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # The metrics file reads as one run: the resumed run dropped nothing and repeated nothing.
    steps = [m["step"] for m in read_metrics(out) if "train/loss" in m]
    assert steps == [1, 2, 3, 4]
    assert [m["train/loss"] for m in read_metrics(out) if "train/loss" in m] == [a.losses[s] for s in (1, 2, 3, 4)]


def test_bar_loss_is_the_metrics_files_loss_on_the_same_step(tiny, tmp_path, monkeypatch, capsys, caplog):
    """With log_every=2 the file's train/loss is the mean of two steps; the bar showed the last
    step's own loss (6.11 against 7.5153 at step 2). Now each logged step's bar value is the file's,
    and so is the final bar line printed at close (a log file: stderr is not a terminal)."""
    from xdlm_tune.train.metrics import Progress

    shown: list[float] = []
    update = Progress.update
    monkeypatch.setattr(Progress, "update", lambda self, **kw: (shown.append(kw["loss"]), update(self, **kw))[1])
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="xdlm_tune"):
        result = run(tiny, out, "training.max_steps=4", "training.log_every=2", "training.eval_every=0")
    # What the start line says is not logged before it as well (trainable counts, mask id, family).
    said = ("trainable parameters", "prepared ", "mask token: id")
    assert not [r.message for r in caplog.records if r.message.startswith(said)]
    logged = {m["step"]: m["train/loss"] for m in read_metrics(out) if "train/loss" in m}
    assert sorted(logged) == [2, 4] and logged[2] != result.losses[2]  # a two-step mean, not step 2's loss
    assert {2: shown[1], 4: shown[3]} == logged
    printed = capsys.readouterr()
    final = [line for line in printed.err.splitlines() if "loss=" in line][-1]
    assert f"loss={logged[4]:.4f}" in final, final
    # The start line names the setup in words, not accelerate's enum (NO) and precision "no".
    assert "1 process(es), no data parallelism, cpu, precision fp32;" in printed.out, printed.out


def test_resume_with_lora_dropout_matches_the_uninterrupted_run(tiny, tmp_path):
    """LoRA dropout draws from the global RNG (the 7B/8B recipes use 0.05): a resumed run takes
    the same dropout masks only if the checkpoint's RNG state is restored."""
    opts = (*SHORT, "lora.dropout=0.1", "training.eval_every=0")
    a = run(tiny, tmp_path / "a", *opts)
    out = tmp_path / "b"
    shutil.copytree(a.output_dir, out)
    shutil.rmtree(out / "checkpoint-00000004")  # as if killed after the step-2 checkpoint
    b = run(tiny, out, *opts, "training.resume=true")
    assert b.info["resumed_from"].endswith("checkpoint-00000002")
    assert b.losses == {3: a.losses[3], 4: a.losses[4]}  # bit for bit
    wa, wb = trainable(a.checkpoint), trainable(b.checkpoint)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_contents_and_keep_last(uninterrupted, tiny, tmp_path):
    a = uninterrupted
    assert [s for s, _ in list_checkpoints(a.output_dir)] == [2, 4]
    names = {p.name for p in a.checkpoint.iterdir()}
    assert {
        "adapter",
        "trainable.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
        "rank_00000.pt",
        "recipe.yaml",
    } <= names
    assert (a.output_dir / "recipe.yaml").is_file() and (a.output_dir / "metrics.jsonl").is_file()
    assert any((a.output_dir / "tensorboard").iterdir())
    state = json.loads((a.checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 1 and state["tokens_seen"] > 0
    # The adapter is a plain PEFT folder: it loads onto the prepared base and holds the trained weights.
    from peft import PeftModel

    from xdlm_tune.model import prepare_model

    r = load_recipe(tiny)
    base = prepare_model(r.model.name_or_path, kind=r.model.kind, shift=r.adaptation.shift).model
    loaded = PeftModel.from_pretrained(base, a.checkpoint / "adapter")
    trained = trainable(a.checkpoint)
    params = dict(loaded.named_parameters())
    for name, value in trained.items():
        assert torch.equal(params[name].detach(), value), name
    assert (a.checkpoint / "adapter" / "tokenizer.json").is_file()


def test_resume_refuses_an_incompatible_recipe_or_overwriting_a_run(uninterrupted, tiny, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(uninterrupted.output_dir, out)
    with pytest.raises(CheckpointError, match=r"diffusion\.k: 0\.1 in the checkpoint, 0\.5 now"):
        run(tiny, out, *SHORT, "training.resume=true", "diffusion.k=0.5")
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run(tiny, out, *SHORT)
    # the same through the command line: a clear message and exit status 2, no traceback
    assert entry.main([str(tiny), f"training.output_dir={out}", "diffusion.k=0.5", "--resume"]) == 2


# --------------------------------------------------------------------------- invariances


def test_gradient_accumulation_takes_the_same_step_as_a_bigger_batch(tiny, tmp_path):
    """4 x 1 x 1 and 2 x 1 x 2 (per-device batch x processes x accumulation): same examples,
    same noise, same global token mean, so the same losses and weights (up to rounding)."""
    common = ("training.max_steps=3", "training.eval_every=0", "training.lr=1e-2", "training.warmup_steps=1")
    big = run(tiny, tmp_path / "big", *common, "training.per_device_batch_size=4", "training.grad_accum=1")
    acc = run(tiny, tmp_path / "acc", *common, "training.per_device_batch_size=2", "training.grad_accum=2")
    for s in big.losses:
        assert acc.losses[s] == pytest.approx(big.losses[s], rel=1e-5)
    wa, wb = trainable(big.checkpoint), trainable(acc.checkpoint)
    # Adam divides by sqrt(v): where a gradient is ~0 its rounding differences become O(lr) steps
    # (seen here: 5e-5 with lr 1e-2 after 3 steps); 1% of lr still catches a wrong accumulation.
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_sft_per_answer_loss_is_the_same_for_any_batch_geometry(tmp_path):
    """data.pad_answer_with_eos: the loss is a mean over the global batch's answers of each
    answer's mean; 4 x 1 x 1 and 2 x 1 x 2 take the same step, and the loss is not the token mean."""
    tiny = make_tiny(tmp_path / "w", base="recipes/smollm2-135m-xdlm-lora-mbpp-sft.yaml")
    rows = [{"prompt": "q" * (1 + 5 * i), "answer": "a" * (3 + i)} for i in range(10)]  # prompts of many lengths
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (
        "training.max_steps=2",
        "training.eval_every=0",
        "training.lr=1e-2",
        "training.warmup_steps=1",
        f"data.source={tmp_path / 'pairs.jsonl'}",
        "data.data_files=null",
        "data.seq_len=48",
        "data.max_prompt_len=null",
        "data.eval_holdout=2",
    )
    big = run(tiny, tmp_path / "big", *common, "training.per_device_batch_size=4", "training.grad_accum=1")
    acc = run(tiny, tmp_path / "acc", *common, "training.per_device_batch_size=2", "training.grad_accum=2")
    assert acc.losses[2] == pytest.approx(big.losses[2], rel=1e-5)
    wa, wb = trainable(big.checkpoint), trainable(acc.checkpoint)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    tokmean = run(tiny, tmp_path / "tok", *common, "training.per_device_batch_size=4", "data.pad_answer_with_eos=false")
    assert tokmean.losses[1] != pytest.approx(big.losses[1], rel=1e-3)


def test_per_answer_weights():
    from xdlm_tune.train.objective import per_answer_weights

    m = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert per_answer_weights(m).tolist() == [0.25, 0.5, 0.0]


def test_heldout_elbo_improves_and_is_reproducible(tiny, tmp_path):
    out = run(
        tiny,
        tmp_path / "e",
        "training.max_steps=30",
        "training.eval_every=30",
        "training.lr=1e-2",
        "training.warmup_steps=2",
        "training.save_every=0",
        "lora.enabled=false",
        "training.eval_batches=2",
    )
    before, after = out.evals[0], out.evals[30]
    assert after["nelbo"] < before["nelbo"] - 0.3, (before, after)
    assert after["bits_per_token"] == pytest.approx(after["nelbo"] / math.log(2))
    assert after["ppl_bound"] == pytest.approx(math.exp(after["nelbo"]))
    assert out.losses[30] < out.losses[1]
    # the noise of the held-out set is fixed: another seed evaluates the same start identically
    again = run(
        tiny,
        tmp_path / "e2",
        "training.max_steps=1",
        "training.eval_every=1",
        "training.seed=7",
        "training.save_every=0",
        "lora.enabled=false",
        "training.eval_batches=2",
    )
    assert again.evals[0] == before


def test_sft_attention_annealing_and_unit_weighting_run(tmp_path):
    """SFT (prompt never noised), causal -> full attention annealing and loss weight 1."""
    tiny = make_tiny(tmp_path / "w", base="recipes/smollm2-135m-xdlm-lora-mbpp-sft.yaml")
    out = run(
        tiny,
        tmp_path / "sft",
        "training.max_steps=3",
        "adaptation.attention_annealing_steps=2",
        "diffusion.loss_weighting=unit",
        "diffusion.k=0.5",
        "training.eval_every=3",
    )
    assert sorted(out.losses) == [1, 2, 3] and all(math.isfinite(v) for v in out.losses.values())
    assert math.isfinite(out.evals[3]["nelbo"])


# --------------------------------------------------------------------------- pieces


def test_noise_never_touches_prompt_or_padding_and_does_not_depend_on_the_split():
    sampler = NoiseSampler(make_schedule("linear"), k=0.5, mask_id=9, vocab_size=10, seed=3)
    x0 = torch.randint(0, 9, (4, 64))
    noisable = torch.ones(4, 64, dtype=torch.bool)
    noisable[:, :10] = False  # prompt
    noisable[1, 50:] = False  # padding
    whole = sampler(x0, noisable, key=(0, 5), rows=[0, 1, 2, 3], n_rows=4)
    assert torch.equal(whole.z_t[~noisable], x0[~noisable])
    assert (whole.z_t[noisable] != x0[noisable]).any()
    # rank 1 of 2 computes its rows alone and gets exactly the same noise
    half = sampler(x0[2:], noisable[2:], key=(0, 5), rows=[2, 3], n_rows=4)
    assert torch.equal(half.z_t, whole.z_t[2:]) and torch.equal(half.alpha, whole.alpha[2:])
    # antithetic: the 4 times t = (1 - alpha) / (1 - eps) are evenly spaced over [eps, 1]
    t = (1 - whole.alpha) / (1 - 1e-3)
    gaps = torch.diff(torch.sort(t).values)
    assert torch.allclose(gaps, torch.full_like(gaps, 0.25 * (1 - 1e-3)), atol=1e-5)
    assert torch.allclose(whole.weight, torch.full((4,), 1 - 1e-3))
    other = sampler(x0, noisable, key=(0, 6), rows=[0, 1, 2, 3], n_rows=4)
    assert not torch.equal(other.z_t, whole.z_t)


def test_learning_rate_schedule():
    t = load_recipe(None, ["training.warmup_steps=4", "training.max_steps=14", "training.lr_scheduler=cosine"]).training
    f = [lr_factor(s, t) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert f[9] == pytest.approx(0.5) and f[13] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    t.lr_scheduler = "constant"
    assert [lr_factor(s, t) for s in (3, 4, 13, 100)] == [1.0] * 4


def test_deepspeed_config_takes_the_recipes_batch_geometry():
    r = load_recipe(REPO / "recipes/llama3-8b-xdlm-lora-zero3.yaml")
    ds = deepspeed_config(r)
    owned = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
    assert [ds[k] for k in owned] == [2, 8, 1.0]
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": "auto"}
    assert deepspeed_config(load_recipe(REPO / "recipes/smollm2-135m-xdlm-lora.yaml")) is None
    r = load_recipe(
        REPO / "recipes/qwen2.5-7b-xdlm-lora-zero2.yaml", ["deepspeed.zero_stage=3", "training.max_grad_norm=null"]
    )
    ds = deepspeed_config(r)
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.0


def test_deepspeed_optimizer_section_is_refused(tmp_path):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(RecipeError, match="remove the 'optimizer' section"):
        deepspeed_config(load_recipe(None, [f"deepspeed.config={cfg}"]))


# --------------------------------------------------------------------------- command line


def test_bad_recipes_are_refused_before_anything_loads(monkeypatch, capsys):
    from xdlm_tune.train import dry_run, loop

    def boom(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(loop, "train", boom)
    monkeypatch.setattr(dry_run, "dry_run", boom)
    recipe = str(REPO / "recipes/smollm2-135m-xdlm-lora.yaml")
    assert entry.main([recipe, "diffusion.kk=0.5"]) == 2
    assert "did you mean 'diffusion.k'" in capsys.readouterr().err
    assert entry.main([recipe, "diffusion.k=2"]) == 2
    assert "diffusion.k: must be in [0, 1]" in capsys.readouterr().err
    assert entry.main([recipe, "deepspeed.config=nowhere/zero9.json", "--dry-run"]) == 2
    assert "nowhere/zero9.json not found" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="a run started"):  # a good recipe does get to the run
        entry.main([recipe])


def test_train_is_a_subcommand_of_xdlm_tune(capsys):
    from xdlm_tune import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--dry-run" in out and "--resume" in out and "section.key=value" in out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_passes_the_dry_run(recipe, capsys):
    """The real loop on a tiny stand-in: one step, held-out ELBO, checkpoint. DeepSpeed is
    switched off here (its first use compiles a C++ op); test_train_distributed.py runs the
    DeepSpeed recipes' dry runs with DeepSpeed on."""
    code = entry.main([str(recipe), "deepspeed.config=null", "deepspeed.zero_stage=null", "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "dry run OK" in out and "step 1 loss" in out and "nan" not in out
    assert "[real size, " in out.splitlines()[-1] and out.splitlines()[-1].startswith("plan: ")  # the meta check


def test_a_failed_start_leaves_no_recipe_behind(tiny, tmp_path):
    """A run that fails before its first checkpoint, in a folder it created, removes its
    recipe.yaml and metrics.jsonl (and the folder): nothing there reads as a run."""
    out = tmp_path / "run"
    with pytest.raises(OSError):
        run(tiny, out, f"model.name_or_path={tmp_path / 'no-such-model'}")
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(OSError):
        run(tiny, kept, f"model.name_or_path={tmp_path / 'no-such-model'}")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt", "recipe.yaml"]  # not created by it: untouched
