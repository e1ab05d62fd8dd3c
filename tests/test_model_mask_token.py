"""Mask-token choice, addition with mean-initialised rows, and the safety checks."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BOS_ID, EOS_ID, PAD_ID, VOCAB, tiny_model, tiny_tokenizer

from xdlm_tune.model import DEFAULT_MASK_TOKEN, setup_mask_token


def test_reuses_a_reserved_token_without_resizing():
    model, tok = tiny_model("llama"), tiny_tokenizer(reserved=True)
    before = model.get_input_embeddings().weight.clone()
    mask_id = setup_mask_token(model, tok)
    assert tok.convert_ids_to_tokens(mask_id) == "<|reserved_special_token_0|>"
    assert tok.mask_token_id == mask_id and model.config.mask_token_id == mask_id
    assert torch.equal(model.get_input_embeddings().weight, before)  # nothing touched


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied and tied heads
def test_adds_mask_token_with_mean_rows_when_the_matrix_is_full(family):
    tok = tiny_tokenizer(vocab_size=VOCAB)  # every embedding row is taken
    model = tiny_model(family)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    mask_id = setup_mask_token(model, tok)
    assert mask_id == VOCAB and tok.convert_ids_to_tokens(mask_id) == DEFAULT_MASK_TOKEN
    new_in = model.get_input_embeddings().weight
    new_out = model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == VOCAB + 1 == model.config.vocab_size
    torch.testing.assert_close(new_in[mask_id], old_in.mean(0))
    torch.testing.assert_close(new_out[mask_id], old_out.mean(0))
    torch.testing.assert_close(new_in[:VOCAB], old_in)
    assert (new_in.data_ptr() == new_out.data_ptr()) == model.config.tie_word_embeddings
    # The model still runs with the new id, and the tokenizer encodes the token.
    assert model(torch.tensor([[5, mask_id, 6]])).logits.shape[-1] == VOCAB + 1
    assert tok(f"w5 {DEFAULT_MASK_TOKEN} w6").input_ids == [5, mask_id, 6]


def test_added_token_uses_a_spare_row_when_there_is_one():
    tok = tiny_tokenizer()  # 120 tokens, 128 embedding rows (like Qwen's padded matrix)
    model = tiny_model("llama")
    old = model.get_input_embeddings().weight.detach().clone()
    mask_id = setup_mask_token(model, tok)
    assert mask_id == len(tok) - 1 < VOCAB
    assert model.get_input_embeddings().weight.shape[0] == VOCAB  # no resize
    torch.testing.assert_close(model.get_input_embeddings().weight[mask_id], old.mean(0))


def test_explicit_mask_token_and_id():
    model, tok = tiny_model("llama"), tiny_tokenizer(reserved=True)
    assert setup_mask_token(model, tok, mask_token="<|reserved_special_token_2|>") == len(tok) - 2
    assert setup_mask_token(model, tok, mask_id=7) == 7
    assert tok.mask_token == "w7"
    with pytest.raises(ValueError, match="set only one"):
        setup_mask_token(model, tok, mask_token="w8", mask_id=7)


@pytest.mark.parametrize("bad, field", [(PAD_ID, "pad_token_id"), (EOS_ID, "eos_token_id"), (BOS_ID, "bos_token_id")])
def test_refuses_pad_eos_bos(bad, field):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(ValueError, match=f"mask_id={bad} equals the model's {field}.*mask_id"):
        setup_mask_token(model, tok, mask_id=bad)


def test_refuses_ids_outside_the_embedding_matrix():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    for bad in (VOCAB, -1):
        with pytest.raises(ValueError, match=rf"outside the embedding matrix \(rows 0..{VOCAB - 1}\).*mask_id"):
            setup_mask_token(model, tok, mask_id=bad)


def test_reserved_token_equal_to_pad_is_skipped():
    model, tok = tiny_model("llama"), tiny_tokenizer(reserved=True)
    tok.pad_token = "<|reserved_special_token_0|>"
    assert tok.convert_ids_to_tokens(setup_mask_token(model, tok)) == "<|reserved_special_token_1|>"


def test_diffusion_bases_never_grow_the_vocabulary():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(ValueError, match="no mask token found"):
        setup_mask_token(model, tok, add_if_missing=False)
    model.config.mask_token_id = 9  # e.g. recorded by an exported model
    assert setup_mask_token(model, tok, add_if_missing=False) == 9
