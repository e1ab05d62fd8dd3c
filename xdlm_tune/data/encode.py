"""Records -> token examples -> padded batches.

An encoded example is {"input_ids": list[int], "prompt_len": int}: the first prompt_len
tokens are the prompt (never noised, no loss); pretraining blocks have prompt_len 0.
The collator turns a list of them into the tensors the trainer uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch

from ..config import DataConfig
from .sources import DataError


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token: documents and answers end with EOS; set tokenizer.eos_token")
    return tokenizer.eos_token_id


def _ids(tokenizer, texts: list[str], *, special: bool) -> list[list[int]]:
    # verbose=False: long documents are expected here (they get packed), no warning needed
    return tokenizer(texts, add_special_tokens=special, verbose=False)["input_ids"]


def pack(docs: Iterable[list[int]], block_len: int) -> Iterator[list[int]]:
    """Concatenate token lists and cut them into full blocks; the last partial block is dropped."""
    buf: list[int] = []
    for ids in docs:
        buf.extend(ids)
        while len(buf) >= block_len:
            yield buf[:block_len]
            del buf[:block_len]


def encode_pair(
    prompt_ids: list[int],
    answer_ids: list[int],
    *,
    seq_len: int,
    max_prompt_len: int | None,
    where: str,
    eos_pad: int | None = None,
) -> dict[str, Any]:
    """Prompt + answer as one example of at most seq_len tokens; the answer is cut to fit.

    ``eos_pad``: the EOS id to pad the answer with up to exactly seq_len tokens (LLaDA's SFT):
    those EOS are answer tokens, noised and scored like the others.
    """
    if max_prompt_len is not None and len(prompt_ids) > max_prompt_len:
        prompt_ids = prompt_ids[-max_prompt_len:]  # keep the end: the question is usually last
    if len(prompt_ids) >= seq_len:
        raise DataError(
            f"{where}: the prompt is {len(prompt_ids)} tokens and data.seq_len is {seq_len}, which leaves "
            "no room for the answer; raise data.seq_len, or set data.max_prompt_len below it to keep "
            "only the end of long prompts"
        )
    if not answer_ids:
        raise DataError(f"{where}: the answer is empty")
    ids = prompt_ids + answer_ids[: seq_len - len(prompt_ids)]
    if eos_pad is not None:
        ids = ids + [eos_pad] * (seq_len - len(ids))
    return {"input_ids": ids, "prompt_len": len(prompt_ids)}


def render_chat(tokenizer, messages: list[dict[str, str]], where: str) -> tuple[str, str]:
    """Split a chat into (prompt text, answer text) with the tokenizer's chat template.

    The answer is the last message, which must be the assistant's; everything before it
    (system and earlier turns) is prompt and carries no loss.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data.columns.messages is set but the tokenizer has no chat template; use prompt/answer "
            "columns (data.columns.prompt / answer) or a tokenizer that has one"
        )
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} dicts, got {messages!r:.200}")
    if messages[-1].get("role") != "assistant":
        raise DataError(
            f"{where}: the last message must be the assistant's answer, got role {messages[-1].get('role')!r}"
        )
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DataError(
            f"{where}: the chat template does not render the conversation as prompt + answer; "
            "use prompt/answer columns instead"
        )
    return prompt, full[len(prompt) :]


def example_encoder(cfg: DataConfig, tokenizer) -> Callable[[list[dict[str, Any]], list[int]], list[dict[str, Any]]]:
    """A function mapping records (with their indices, for error messages) to examples.

    pretrain: one unpacked example per record (tokens + EOS); the caller packs them.
    sft: one example per record: prompt (with the tokenizer's usual special tokens, e.g.
    BOS) + answer + EOS, or a chat rendered with the template; with data.pad_answer_with_eos
    the answer is padded with EOS up to data.seq_len.
    """
    eos = _eos_id(tokenizer)
    eos_pad = eos if cfg.mode == "sft" and cfg.pad_answer_with_eos else None
    cols = cfg.columns

    def where(i: int) -> str:
        return f"record {i} of {cfg.source!r}"

    def encode(records: list[dict[str, Any]], indices: list[int]) -> list[dict[str, Any]]:
        if cfg.mode == "pretrain":
            texts = [r[cols.text] or "" for r in records]
            return [{"input_ids": ids + [eos], "prompt_len": 0} for ids in _ids(tokenizer, texts, special=False)]
        if cols.messages:
            pairs = [render_chat(tokenizer, r[cols.messages], where(i)) for r, i in zip(records, indices)]
            prompts = _ids(tokenizer, [p for p, _ in pairs], special=False)  # the template has its own BOS
            answers = _ids(tokenizer, [a for _, a in pairs], special=False)  # ... and its own end of turn
        else:
            prompts = _ids(tokenizer, [r[cols.prompt] for r in records], special=True)
            answers = [a + [eos] for a in _ids(tokenizer, [r[cols.answer] for r in records], special=False)]
        return [
            encode_pair(p, a, seq_len=cfg.seq_len, max_prompt_len=cfg.max_prompt_len, where=where(i), eos_pad=eos_pad)
            for p, a, i in zip(prompts, answers, indices)
        ]

    return encode


def encode_dataset(ds, cfg: DataConfig, tokenizer):
    """Encode a map-style datasets.Dataset: packed blocks (pretrain) or prompt/answer examples (sft)."""
    encode = example_encoder(cfg, tokenizer)

    def batch_fn(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        records = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
        examples = encode(records, indices)
        if cfg.mode == "pretrain":  # pack within each map batch: a few tokens lost per 1000 records
            blocks = list(pack((e["input_ids"] for e in examples), cfg.seq_len))
            return {"input_ids": blocks, "prompt_len": [0] * len(blocks)}
        return {"input_ids": [e["input_ids"] for e in examples], "prompt_len": [e["prompt_len"] for e in examples]}

    out = ds.map(
        batch_fn,
        batched=True,
        batch_size=1000,
        with_indices=True,
        remove_columns=ds.column_names,
        num_proc=cfg.num_proc,
        desc="tokenizing",
    )
    if len(out) == 0:
        what = f"one block of data.seq_len = {cfg.seq_len} tokens" if cfg.mode == "pretrain" else "one example"
        raise DataError(f"dataset {cfg.source!r} gives fewer than {what}")
    return out


@dataclass
class Collator:
    """Pads examples into a batch. Padding is attended by nothing and carries no loss.

    Returns input_ids [B, L] long, attention_mask [B, L] long (1 = real token),
    prompt_mask [B, L] bool (never noised), loss_mask [B, L] bool (real and not prompt).
    """

    pad_id: int
    pad_to: int | None = None  # fixed length; None: the longest example in the batch

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(e["input_ids"]) for e in examples)
        length = max(n, self.pad_to or 0)
        input_ids = torch.full((len(examples), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        prompt_mask = torch.zeros((len(examples), length), dtype=torch.bool)
        for i, e in enumerate(examples):
            ids = e["input_ids"]
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
            prompt_mask[i, : e["prompt_len"]] = True
        loss_mask = attention_mask.bool() & ~prompt_mask
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_mask": prompt_mask,
            "loss_mask": loss_mask,
        }


def make_collator(tokenizer, pad_to: int | None = None) -> Collator:
    """Pad with the tokenizer's pad token, else EOS (the id does not matter: it is masked out)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)
    return Collator(pad_id=pad, pad_to=pad_to)
