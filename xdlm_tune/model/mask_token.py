"""Choose (or add) the mask token `m` of the diffusion and check that it is safe to use.

Order of choice when the recipe names none: the tokenizer's own mask token (Gemma's
`<mask>`, a diffusion base, a model this toolkit exported), else an unused reserved token
(Llama 3's `<|reserved_special_token_N|>`, Gemma's `<unusedN>`), else a new `<|mask|>`
token whose embedding row starts as the mean of the existing rows.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from xdlm_tune.model.common import embeddings_tied, unwrap

logger = logging.getLogger(__name__)

DEFAULT_MASK_TOKEN = "<|mask|>"
RESERVED_TOKEN_PATTERNS = (
    re.compile(r"<\|reserved_special_token_(\d+)\|>"),  # Llama 3
    re.compile(r"<unused(\d+)>"),  # Gemma
)


def setup_mask_token(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    mask_token: str | None = None,
    mask_id: int | None = None,
    *,
    add_if_missing: bool = True,
) -> int:
    """Pick the mask id, adding `<|mask|>` (and resizing the embeddings) if needed; returns it.

    `mask_id` or `mask_token` from the recipe take precedence. The result is recorded as
    `tokenizer.mask_token` and `config.mask_token_id` so that saved models carry it. With
    `add_if_missing=False` (diffusion bases) the vocabulary is never changed.
    """
    hf = unwrap(model)
    if mask_id is not None:
        if mask_token is not None and tokenizer.convert_tokens_to_ids(mask_token) != mask_id:
            raise ValueError(
                f"mask_token={mask_token!r} has id {tokenizer.convert_tokens_to_ids(mask_token)}, "
                f"not mask_id={mask_id}; set only one of them"
            )
    elif mask_token is not None:
        if mask_token in tokenizer.get_vocab():
            mask_id = tokenizer.convert_tokens_to_ids(mask_token)
        elif add_if_missing:
            mask_id = _add_token(hf, tokenizer, mask_token)
        else:
            raise ValueError(f"mask_token={mask_token!r} is not in the tokenizer's vocabulary")
    else:
        mask_id = _existing_mask_id(hf, tokenizer)
        if mask_id is None:
            mask_id = _reserved_token_id(hf, tokenizer)
        if mask_id is None:
            if not add_if_missing:
                raise ValueError(
                    "no mask token found (tokenizer.mask_token and config.mask_token_id are unset); "
                    "set `mask_id` (e.g. 126336 for LLaDA, 151666 for Dream) or `mask_token`"
                )
            mask_id = _add_token(hf, tokenizer, DEFAULT_MASK_TOKEN)

    check_mask_id(hf, tokenizer, mask_id)
    if mask_id < len(tokenizer) and tokenizer.mask_token_id != mask_id:
        tokenizer.mask_token = tokenizer.convert_ids_to_tokens(mask_id)
    hf.config.mask_token_id = mask_id
    logger.debug(
        "mask token: id %d (%r)", mask_id, tokenizer.convert_ids_to_tokens(mask_id)
    )  # train's start line says it
    return mask_id


def _special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, set[int]]:
    """pad / eos / bos ids as the tokenizer, config and generation config know them."""
    sources = [tokenizer, model.config, getattr(model, "generation_config", None)]
    found: dict[str, set[int]] = {}
    for field in ("pad_token_id", "eos_token_id", "bos_token_id"):
        ids: set[int] = set()
        for source in sources:
            value = getattr(source, field, None)
            if value is None:
                continue
            ids.update(value if isinstance(value, (list, tuple)) else [value])
        found[field] = ids
    return found


def check_mask_id(model: nn.Module, tokenizer: PreTrainedTokenizerBase, mask_id: int) -> None:
    """Refuse a mask id outside the embedding matrix or equal to pad / eos / bos."""
    hf = unwrap(model)
    rows = hf.get_input_embeddings().weight.shape[0]
    head = hf.get_output_embeddings()
    if head is not None:
        rows = min(rows, head.weight.shape[0])
    if not 0 <= mask_id < rows:
        raise ValueError(
            f"mask_id={mask_id} is outside the embedding matrix (rows 0..{rows - 1}); "
            f"set `mask_id` below {rows}, or leave it unset so that a reserved token is reused "
            f"or {DEFAULT_MASK_TOKEN} is added"
        )
    for field, ids in _special_ids(hf, tokenizer).items():
        if mask_id in ids:
            raise ValueError(
                f"mask_id={mask_id} equals the model's {field}; the mask must be a token that real "
                f"data never contains. Set `mask_id`/`mask_token` to an unused token, or leave both "
                f"unset so that a reserved token is reused or {DEFAULT_MASK_TOKEN} is added"
            )


def _existing_mask_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    return getattr(model.config, "mask_token_id", None)


def _reserved_token_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The lowest-numbered reserved token that has an embedding row and is not pad/eos/bos."""
    rows = model.get_input_embeddings().weight.shape[0]
    taken = set().union(*_special_ids(model, tokenizer).values())
    candidates = []
    for token, token_id in tokenizer.get_vocab().items():
        for pattern in RESERVED_TOKEN_PATTERNS:
            match = pattern.fullmatch(token)
            if match and token_id < rows and token_id not in taken:
                candidates.append((int(match.group(1)), token_id))
    return min(candidates)[1] if candidates else None


@torch.no_grad()
def _add_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """Add `token` as the mask token; its embedding (and untied output) row = mean of the old rows."""
    tokenizer.add_special_tokens({"mask_token": token})
    mask_id = tokenizer.convert_tokens_to_ids(token)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if mask_id >= old_rows:
        # mean_resizing=False: we set the new row ourselves, to the plain mean (no sampling).
        model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
    # Otherwise the id lands on a spare padding row (e.g. Qwen's 151936-row matrix), which
    # was never trained: it gets the mean as well.
    weights = [model.get_input_embeddings().weight]
    if not embeddings_tied(model):
        weights.append(model.get_output_embeddings().weight)
    for weight in weights:
        weight[mask_id] = weight[:old_rows].float().mean(dim=0).to(weight.dtype)
    logger.info("added %r as id %d (embedding rows: %d)", token, mask_id, weights[0].shape[0])
    return mask_id
