"""LoRA / QLoRA with a trainable mask row, output projection through PEFT, gradient checkpointing."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_models import random_ids, tiny_model, tiny_tokenizer

from xdlm_tune.model import (
    attach_lora,
    denoiser_hidden,
    make_bidirectional,
    output_projection,
    parameter_counts,
    prepare_model,
    setup_mask_token,
    unwrap,
)


def _converted(family: str, **overrides):
    model = make_bidirectional(tiny_model(family, **overrides))
    tok = tiny_tokenizer()
    mask_id = setup_mask_token(model, tok)
    return model, tok, mask_id


def _logits(model, ids, *, shift=False):
    weight, bias, softcap = output_projection(model)
    logits = denoiser_hidden(model, ids, shift=shift) @ weight.T
    if bias is not None:
        logits = logits + bias
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def _effective_rows(model):
    hf = unwrap(model)
    return hf.get_input_embeddings().weight.detach().clone(), hf.get_output_embeddings().weight.detach().clone()


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied and tied heads
def test_only_the_mask_row_of_the_embeddings_trains(family):
    model, _, mask_id = _converted(family)
    model = attach_lora(model, r=4, alpha=8, mask_id=mask_id)
    model.train()
    emb_before, head_before = _effective_rows(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = random_ids(2, 8)
    ids[:, 3] = mask_id
    logits = _logits(model, ids)
    # logsumexp reaches every output row (the mask column included), ids[:, 3] the mask input row.
    loss = logits.logsumexp(-1).mean() - logits[..., 5].mean()
    loss.backward()
    opt.step()

    emb_after, head_after = _effective_rows(model)
    others = torch.arange(emb_before.shape[0]) != mask_id
    assert torch.equal(emb_after[others], emb_before[others])
    assert torch.equal(head_after[others], head_before[others])
    assert not torch.equal(emb_after[mask_id], emb_before[mask_id])
    assert not torch.equal(head_after[mask_id], head_before[mask_id])
    # The frozen base matrices themselves never change.
    hidden = unwrap(model).config.hidden_size
    counts = parameter_counts(model)
    assert counts["token_rows"] == hidden * (1 if unwrap(model).config.tie_word_embeddings else 2)
    assert counts["other"] == 0


def test_lora_parameter_count_and_targets():
    model, _, mask_id = _converted("llama")
    model = attach_lora(model, r=4, mask_id=mask_id)
    # all-linear: q 32->32, k/v 32->16, o 32->32, gate/up 32->64, down 64->32; 2 layers.
    per_layer = 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 3 * (32 + 64))
    assert parameter_counts(model)["lora"] == 2 * per_layer
    assert not hasattr(unwrap(model).lm_head, "lora_A")


def test_output_head_cannot_be_a_lora_target():
    model, _, mask_id = _converted("llama")
    with pytest.raises(ValueError, match="output head"):
        attach_lora(model, target_modules=["q_proj", "lm_head"], mask_id=mask_id)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])  # untied, tied, softcapped
def test_output_projection_matches_the_model_logits_through_peft(family):
    model, _, mask_id = _converted(family)
    model = attach_lora(model, r=4, mask_id=mask_id)
    # Make the adapters and the mask row non-trivial.
    for p in model.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn_like(p))
    ids = random_ids(2, 8)
    ids[:, 2] = mask_id
    weight, bias, softcap = output_projection(model)
    assert weight.shape == (unwrap(model).config.vocab_size, unwrap(model).config.hidden_size)
    assert bias is None
    assert softcap == (30.0 if family == "gemma2" else None)
    torch.testing.assert_close(_logits(model, ids), model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{"use_dora": True}, {"use_rslora": True, "dropout": 0.1}])
def test_dora_and_rslora_train(options):
    model, _, mask_id = _converted("qwen3")
    model = attach_lora(model, r=4, mask_id=mask_id, **options)
    model.train()
    if options.get("use_dora"):
        assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    loss = _logits(model, random_ids(2, 6)).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, _, mask_id = _converted("llama")
        torch.manual_seed(0)  # same LoRA initialisation in both runs
        model = attach_lora(model, r=4, mask_id=mask_id, gradient_checkpointing=checkpointing)
        model.train()
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == checkpointing
        ids = random_ids(2, 8)
        ids[:, 1] = mask_id
        _logits(model, ids, shift=True).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def _save_tiny(tmp_path, family="llama", **overrides):
    tiny_model(family, **overrides).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    return tmp_path


def test_prepare_model_reports_trainable_counts(tmp_path, caplog):
    path = _save_tiny(tmp_path)
    with caplog.at_level(logging.INFO, logger="xdlm_tune"):
        prepared = prepare_model(path, lora={"r": 4, "alpha": 8})
    assert prepared.kind == "causal" and prepared.family == "llama" and prepared.shift is True
    assert prepared.mask_id == len(prepared.tokenizer) - 1
    assert unwrap(prepared.model).config.is_causal is False
    counts = prepared.parameter_counts
    assert counts["trainable"] == counts["lora"] + counts["token_rows"] > 0
    assert "trainable parameters" in caplog.text

    full = prepare_model(path, shift=False)  # no LoRA: everything trains
    assert full.shift is False
    assert full.parameter_counts["trainable"] == full.parameter_counts["total"]


def test_qlora_nf4_trains_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    path = _save_tiny(tmp_path, hidden_size=64, intermediate_size=128, head_dim=16)
    prepared = prepare_model(path, quantization="nf4", lora={"r": 4}, gradient_checkpointing=True)
    model = prepared.model
    assert unwrap(model).is_loaded_in_4bit
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = random_ids(2, 8)
    ids[:, 4] = prepared.mask_id
    before = unwrap(model).get_input_embeddings().weight.detach().clone()
    loss = _logits(model, ids, shift=True).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    after = unwrap(model).get_input_embeddings().weight.detach()
    assert torch.isfinite(loss)
    changed = (after != before).any(-1)
    assert changed.nonzero().flatten().tolist() == [prepared.mask_id]
    with pytest.raises(ValueError, match="cannot be fully fine-tuned"):
        prepare_model(path, quantization="nf4")


def test_qlora_without_bitsandbytes_says_what_to_do(tmp_path, monkeypatch):
    import xdlm_tune.model.load as load

    real_find_spec = load.importlib.util.find_spec
    monkeypatch.setattr(
        load.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'xdlm-tune\[qlora\]'"):
        load.load_base(tmp_path, quantization="nf4")
    with pytest.raises(ValueError, match="use None or 'nf4'"):
        load.load_base(tmp_path, quantization="int3")


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # untied head; tied and softcapped
def test_fused_xdlm_loss_trains_a_tiny_denoiser(family):
    from xdlm_tune.diffusion import forward_noise, fused_xdlm_loss, make_schedule

    model, tok, mask_id = _converted(family)
    torch.manual_seed(0)
    model = attach_lora(model, r=8, alpha=16, mask_id=mask_id)
    model.train()
    schedule, k = make_schedule("linear"), 0.1
    x0 = random_ids(2, 12)
    mask = torch.ones_like(x0)
    mask[1, 9:] = 0
    t = torch.tensor([0.4, 0.7])
    vocab = unwrap(model).config.vocab_size
    g = torch.Generator().manual_seed(0)
    z_t = forward_noise(x0, schedule.alpha(t), k=k, mask_id=mask_id, vocab_size=vocab, generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        weight, bias, softcap = output_projection(model)
        hidden = denoiser_hidden(model, z_t, mask, shift=True)
        rate = schedule.neg_dalpha_dt(t)
        h = fused_xdlm_loss(
            hidden,
            weight,
            z_t,
            x0,
            schedule.alpha(t),
            k=k,
            mask_id=mask_id,
            loss_mask=mask,
            bias=bias,
            logit_softcap=softcap,
            token_weight=rate,
        )
        loss = (rate[:, None] * h).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
