"""LLaDA- and Dream-format bases end to end: a LoRA run of a few steps through the real training
loop, `xdlm-tune export`, and the export reloaded (plain transformers, remote-code
`diffusion_generate`, and again as a diffusion base for training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from native_bases import MASK_ID, dream_base, llada_base
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from xdlm_tune.checkpoints.load import load_checkpoint
from xdlm_tune.config import load_recipe
from xdlm_tune.export import export_run, load_export, read_settings
from xdlm_tune.export.modeling import MODELING_FILE, modeling_source
from xdlm_tune.model import position_ids_from_mask
from xdlm_tune.sampling import generate
from xdlm_tune.train.dry_run import stand_in_recipe
from xdlm_tune.train.loop import train

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "llada": (llada_base, "LlamaForCausalLM", "llama", False),
    "dream": (dream_base, "Qwen2ForCausalLM", "qwen2", True),
}


@pytest.fixture(scope="module", params=list(CASES))
def run(request, tmp_path_factory):
    """3 LoRA steps on the base (lr 1e-2 so that adapters and mask row move), then an export."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    make, cls, model_type, shift = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    base = make(tmp)
    recipe, _ = stand_in_recipe(load_recipe(REPO / "recipes" / "smollm2-135m-xdlm-lora.yaml"), tmp / "work")
    m, a, t = recipe.model, recipe.adaptation, recipe.training
    m.name_or_path, m.kind, m.trust_remote_code = str(base), "diffusion", False
    a.mask_token, a.mask_id, a.shift = None, None, None  # from config.json and the family
    recipe.lora.r, recipe.lora.alpha = 4, 8
    t.max_steps, t.save_every, t.eval_every, t.lr, t.warmup_steps = 3, 3, 3, 1e-2, 1
    result = train(recipe.validate())
    out = export_run(result.output_dir, tmp / "export")
    yield dict(name=request.param, base=base, result=result, out=out, cls=cls, model_type=model_type, shift=shift)
    torch.set_num_threads(threads)


def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 900, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    return ids, mask


def test_the_run_trains_natively_and_moves_the_weights(run):
    """Checked against the base checkpoint itself: the run's family is the native class's, its
    mask id and shift the family's, and the merged mask row differs from the base's."""
    res = run["result"]
    assert res.step == 3 and res.info["family"] == run["model_type"]
    settings = read_settings(run["out"])
    assert (settings["mask_id"], settings["shift"]) == (MASK_ID, run["shift"])
    base = load_file(run["base"] / "model.safetensors")
    merged = load_file(run["out"] / "model.safetensors")
    embed = "model.transformer.wte.weight" if run["name"] == "llada" else "model.embed_tokens.weight"
    assert not torch.equal(merged["model.embed_tokens.weight"][MASK_ID], base[embed][MASK_ID])
    assert torch.equal(merged["model.embed_tokens.weight"][:MASK_ID], base[embed][:MASK_ID])


def test_the_export_is_our_bidirectional_folder_with_the_generated_modeling_file(run):
    config = json.loads((run["out"] / "config.json").read_text())
    assert config["model_type"] == run["model_type"] and config["is_causal"] is False
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_xdlm.XDLMForCausalLM"
    assert config["xdlm_source_model_type"] == ("llada" if run["name"] == "llada" else "Dream")
    assert (run["out"] / MODELING_FILE).read_text() == modeling_source(run["cls"])
    assert "diffusion_generate" in (run["out"] / MODELING_FILE).read_text()
    # Saved under the native names and classes: nothing points back at the base's own code.
    assert "model.layers.0.self_attn.q_proj.weight" in load_file(run["out"] / "model.safetensors")
    tok_config = json.loads((run["out"] / "tokenizer_config.json").read_text())
    assert "auto_map" not in tok_config and tok_config["mask_token"] in ("<|mask|>", "<|mdm_mask|>")


def test_the_export_reproduces_the_trained_model(run):
    """Checked against the trained model as `xdlm-tune export` rebuilds it from the checkpoint
    (base + saved adapter, unmerged): logits on a left-padded batch, and the sampler's tokens
    from the export's own `diffusion_generate` vs xdlm-tune's `generate`."""
    trained, tok, mask_id, shift, _ = load_checkpoint(run["result"].output_dir)
    ids, mask = batch()
    with torch.no_grad():
        want = trained(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    remote = AutoModelForCausalLM.from_pretrained(run["out"], trust_remote_code=True).eval()
    plain = AutoModelForCausalLM.from_pretrained(run["out"]).eval()  # no remote code: the family's class
    assert type(remote).__name__ == "XDLMForCausalLM" and type(plain).__name__ == run["cls"]
    real = mask.bool()
    for model in (remote, plain):
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    prompts, pmask = ids[:, :6], mask[:, :6]
    for alg in ("confidence", "xdlm"):
        ref = generate(
            trained,
            prompts,
            attention_mask=pmask,
            steps=4,
            gen_length=8,
            block_length=4,
            sampler=alg,
            k=0.1,
            mask_id=mask_id,
            shift=shift,
            temperature=0.0,
        )
        got = remote.diffusion_generate(
            prompts, attention_mask=pmask, max_new_tokens=8, steps=4, block_length=4, temperature=0.0, alg=alg
        )
        assert torch.equal(got, ref), alg


def test_the_export_loads_back_as_a_diffusion_base_for_training(run):
    prepared = load_export(run["out"], lora={"r": 4})
    assert (prepared.kind, prepared.mask_id, prepared.shift) == ("diffusion", MASK_ID, run["shift"])
    ids, mask = batch()
    out = prepared.model(input_ids=ids, attention_mask=mask).logits
    out.logsumexp(-1).mean().backward()
    assert any(p.grad is not None for n, p in prepared.model.named_parameters() if "lora_" in n)


def test_a_full_fine_tune_of_the_llada_recipe_exports_and_reloads(tmp_path):
    """The paper's recipe (full fine-tune, no LoRA) on its dry-run stand-in, an LLaDA-format
    checkpoint: the saved model/ folder is a Llama, and the export equals the trained model."""
    torch.set_num_threads(1)
    recipe, _ = stand_in_recipe(
        load_recipe(
            REPO / "recipes" / "llada-8b-xdlm-cpt-zero2.yaml", ["deepspeed.config=null", "deepspeed.zero_stage=null"]
        ),
        tmp_path,
    )
    assert json.loads((Path(recipe.model.name_or_path) / "config.json").read_text())["model_type"] == "llada"
    recipe.training.mixed_precision = "no"
    result = train(recipe.validate())
    saved = json.loads((result.checkpoint / "model" / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["is_causal"] is False and saved["xdlm_shift"] is False
    out = export_run(result.output_dir, tmp_path / "export")
    trained, _, mask_id, shift, _ = load_checkpoint(result.output_dir)
    assert (mask_id, shift) == (recipe.adaptation.mask_id, False)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = batch()
    ids = ids % mask_id
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids, attention_mask=mask).logits,
            trained(input_ids=ids, attention_mask=mask).logits,
            atol=1e-4,
            rtol=1e-4,
        )


def test_the_eval_cli_evaluates_a_native_base_as_a_diffusion_model(tmp_path, benchmark_data, capsys):
    """`xdlm-tune eval --model <LLaDA folder>` (the paper's base row) needs neither --kind nor
    --trust-remote-code: the base is a diffusion model loaded natively, mask id and shift its own."""
    from xdlm_tune.evaluation.entry import eval_main

    torch.set_num_threads(1)
    base = llada_base(tmp_path)
    out = tmp_path / "eval"
    assert (
        eval_main(
            [
                "--benchmark",
                "mbpp",
                "--data",
                str(benchmark_data / "mbpp.jsonl"),
                "--limit",
                "2",
                "--model",
                str(base),
                "--steps",
                "4",
                "--gen-length",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {r["steps"] for r in rows} == {4}
    assert "| " in (out / "summary.md").read_text()
