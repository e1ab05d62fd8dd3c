"""`xdlm-tune plan`: every shipped recipe at its real size offline, the refusals, the memory arithmetic."""

from __future__ import annotations

import dataclasses

import pytest

from xdlm_tune import cli
from xdlm_tune.config import load_recipe
from xdlm_tune.config.shipped import shipped_files
from xdlm_tune.model import real_size
from xdlm_tune.train import memory_plan, plan

RECIPES = [p.stem for p in shipped_files("recipes")]
# Public parameter counts of the bases (model cards): the shipped configs must reproduce them.
BASE_PARAMETERS = {
    "llama3-8b-xdlm-lora-zero3": 8_030_261_248,
    "qwen2.5-7b-xdlm-lora-zero2": 7_615_616_512,
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No Hub: the configs come from a local folder or the copies shipped with xdlm-tune."""
    monkeypatch.setattr(real_size, "read_config_dict", lambda source: None)
    monkeypatch.setattr(real_size, "_hub_cache", lambda repo: None)


@pytest.mark.parametrize("name", RECIPES)
def test_plan_prints_the_table_for_every_shipped_recipe(name, capsys):
    code = cli.main(["plan", name, "--gpus", "8", "--gpu-memory", "80"])
    out = capsys.readouterr().out
    assert code == 0, out
    recipe = load_recipe(name)
    assert f"{recipe.model.name_or_path} (" in out and "at its real size" in out
    assert "verdict: fits" in out and "tokens per optimizer step" in out
    for term in ("weights", "gradients", "optimizer states", "activations", "loss buffers", "loss kept", "margin"):
        assert f"    {term} " in out
    if recipe.lora.enabled:
        assert "LoRA per layer (7 modules x" in out
    else:
        assert "LoRA: none (full fine-tune" in out
    if name.startswith("llada"):  # through the native mapping: Llama names, LLaDA's mask
        assert "(llama, diffusion)" in out and "mask id 126336 (<|mdm_mask|>)" in out
        assert "GSAI-ML--LLaDA-8B-Base.json" in out
    if name in BASE_PARAMETERS:
        counts = plan.plan_recipe(recipe).built.prepared.parameter_counts
        assert counts["total"] - counts["trainable"] == BASE_PARAMETERS[name]
        hidden = 4096 if name.startswith("llama") else 3584
        assert counts["token_rows"] == 2 * hidden  # untied head: the mask row trains in both (meta tensors too)


def test_a_misspelt_target_module_is_refused_by_plan_and_dry_run(capsys):
    bad = "lora.target_modules=[q_proj,vv_proj]"
    assert cli.main(["plan", "qwen2.5-7b-xdlm-lora-zero2", bad]) == 2
    err = capsys.readouterr().err
    assert "'vv_proj' match no module" in err and "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in err
    assert "set lora.target_modules to some of those" in err and "Traceback" not in err
    assert cli.main(["train", "qwen2.5-7b-xdlm-lora-zero2", bad, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'vv_proj' match no module" in err and "dry run OK" not in err


def test_an_out_of_vocabulary_mask_id_is_refused_by_plan_and_dry_run(capsys):
    bad = "adaptation.mask_id=126464"  # LLaDA's embedding has 126464 rows
    assert cli.main(["plan", "llada-8b-xdlm-cpt-zero2", bad]) == 2
    err = capsys.readouterr().err
    assert "adaptation.mask_id" in err and "outside the embedding matrix (rows 0..126463)" in err
    assert cli.main(["train", "llada-8b-xdlm-cpt-zero2", bad, "--dry-run"]) == 2
    assert "outside the embedding matrix" in capsys.readouterr().err


def test_a_run_that_does_not_fit_names_the_smallest_change_and_train_refuses_it(monkeypatch, capsys):
    recipe = load_recipe("llada-8b-xdlm-cpt-zero2")  # full fine-tune of 8B
    one = plan.plan_recipe(recipe, gpus=1, gpu_memory_gib=80)
    assert not one.estimate.fits
    assert one.fixes and "zero3_offload" in one.fixes[0][0] and one.fixes[0][2].fits
    assert "does NOT fit" in one.verdict() and "zero3_offload" in one.verdict()
    eight = plan.plan_recipe(recipe, gpus=8, gpu_memory_gib=80)
    assert eight.estimate.fits and eight.estimate.total < one.estimate.total
    monkeypatch.setattr(plan, "detected_gpus", lambda: (1, 1, 80.0))
    assert plan.preflight(recipe) is False
    assert "add --force to start anyway" in capsys.readouterr().err
    assert plan.preflight(recipe, force=True) is True
    assert capsys.readouterr().out.startswith("plan: does NOT fit:")
    monkeypatch.setattr(plan, "detected_gpus", lambda: (8, 1, 80.0))
    assert plan.preflight(recipe) is True
    assert capsys.readouterr().out.startswith("plan: fits:")


def test_activations_that_do_not_fit_are_fixed_by_checkpointing_or_a_smaller_micro_batch():
    overrides = ["training.gradient_checkpointing=false", "training.per_device_batch_size=8"]
    p = plan.plan_recipe(load_recipe("qwen2.5-7b-xdlm-lora-zero2", overrides), gpus=1, gpu_memory_gib=80)
    assert not p.estimate.fits and p.estimate.terms["activations"] > 100 * 2**30  # 8 x 2048 tokens, 28 layers
    fixes = [what for what, _, _ in p.fixes]
    assert fixes[0] == "training.gradient_checkpointing=true"  # ZeRO-3 alone does not help activations
    assert not any("zero3.json" in f for f in fixes)
    assert "training.per_device_batch_size=1 training.grad_accum=64" in fixes
    assert all(est.fits and est.total < p.estimate.total for _, _, est in p.fixes)
    smaller = dict((what, shape) for what, shape, _ in p.fixes)[
        "training.per_device_batch_size=1 training.grad_accum=64"
    ]
    assert smaller.tokens_per_step == p.shape.tokens_per_step  # accumulation keeps the tokens per step


def test_model_states_under_zero_are_deepspeeds_own_estimates():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p = plan.plan_recipe(load_recipe("llada-8b-xdlm-cpt-zero2"), gpus=8).profile
    shape = memory_plan.RunShape(micro_batch=1, seq_len=4096, gpus_per_node=8, zero_stage=2, half=True)
    t = memory_plan.estimate(p, shape).terms
    ds2 = estimate_zero2_model_states_mem_needs(p.total, 8, 1, cpu_offload=False)[1]
    assert p.trainable == p.total and t["weights"] + t["gradients"] + t["optimizer states"] == ds2
    t3 = memory_plan.estimate(p, dataclasses.replace(shape, zero_stage=3)).terms
    ds3 = estimate_zero3_model_states_mem_needs(p.total, p.largest_module, 8, 1, cpu_offload=False)[1]
    assert t3["weights"] + t3["gradients"] + t3["optimizer states"] == ds3
    assert p.largest_module == 126464 * 4096  # the embedding (and the untied head)


def test_checkpointing_keeps_one_input_per_layer_and_the_loss_follows_chunk_mib():
    p = plan.plan_recipe(load_recipe("llama3-8b-xdlm-lora-zero3"), gpus=8).profile
    shape = memory_plan.RunShape(micro_batch=2, seq_len=2048, gpus_per_node=8, zero_stage=3, half=True)
    tokens = 2 * 2048
    off = memory_plan.estimate(p, shape).terms["activations"]
    on = memory_plan.estimate(p, dataclasses.replace(shape, gradient_checkpointing=True)).terms["activations"]
    layer = p.layer_saved_per_token * tokens
    outside = tokens * p.hidden * (4 + 2 * 2)
    assert off == int(p.layers * layer + outside)
    assert on == int(p.layers * tokens * p.hidden * 2 + layer + outside)
    # A LoRA layer saves far more than its [B, L, H] input (norm upcasts, MLP, dropout copies).
    assert 20 * p.hidden * 2 < p.layer_saved_per_token < 200 * p.hidden * 2
    small = memory_plan.estimate(p, dataclasses.replace(shape, chunk_mib=64)).terms["loss buffers"]
    big = memory_plan.estimate(p, dataclasses.replace(shape, chunk_mib=256)).terms["loss buffers"]
    rows = 256 * 2**20 // (4 * p.vocab) - 64 * 2**20 // (4 * p.vocab)
    assert big - small == pytest.approx(rows * p.vocab * (4 * 1.25 + 2), rel=1e-6)


def test_an_unreachable_hub_costs_no_client_retries(monkeypatch):
    import socket

    real_size.hub_reachable.cache_clear()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refused(*a, **k):
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", refused)
    called = []
    monkeypatch.setattr(real_size, "read_config_dict", lambda source: called.append(source))
    raw, source, _ = real_size.base_config("Qwen/Qwen2.5-7B")
    assert called == [] and "shipped with xdlm-tune" in source and raw["hidden_size"] == 3584
    real_size.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert real_size.hub_reachable() is False
    real_size.hub_reachable.cache_clear()
    with pytest.raises(real_size.BaseConfigUnavailable, match="xdlm-tune ships none for it"):
        real_size.base_config("nobody/unknown-7b")


def test_the_stand_in_tokenizer_has_the_real_special_ids():
    tok, _ = real_size._tokenizer("meta-llama/Meta-Llama-3-8B", None, None, {})
    assert len(tok) == 128256 and tok.bos_token_id == 128000 and tok.eos_token_id == 128001
    assert tok.convert_tokens_to_ids("<|reserved_special_token_0|>") == 128002
    assert tok.convert_tokens_to_ids("<|eot_id|>") == 128009


def test_train_on_cuda_refuses_a_run_the_plan_says_cannot_fit_unless_forced(monkeypatch, capsys):
    import torch

    from xdlm_tune.train import entry, loop

    started = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plan, "detected_gpus", lambda: (1, 1, 80.0))
    monkeypatch.setattr(loop, "train", lambda recipe: started.append(recipe))
    monkeypatch.setattr("xdlm_tune.train.runtime.shutdown_process_group", lambda: None)
    assert entry.main(["llada-8b-xdlm-cpt-zero2"]) == 2 and not started
    captured = capsys.readouterr()
    assert "\nplan: does NOT fit" in "\n" + captured.out and "add --force" in captured.err
    assert entry.main(["llada-8b-xdlm-cpt-zero2", "--force"]) == 0 and len(started) == 1
