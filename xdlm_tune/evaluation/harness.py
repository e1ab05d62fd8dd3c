"""Generate, execute and score: MBPP / HumanEval pass@1 at fixed step budgets.

For each step budget the diffusion sampler writes one answer per problem (batched, left-padded
prompts); the executor runs it against the problem's tests; rows are appended to
``samples.jsonl`` as they finish, so an interrupted run resumes where it stopped. The same
harness runs the original causal model with greedy autoregressive decoding as the baseline row
(``steps = None``). With several processes (``accelerate launch``) each rank takes every
world_size-th problem and writes its own file; rank 0 merges and summarises.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..console import progress as progress_bar
from ..model.forward_args import accepts
from ..sampling import SamplerSettings, generate
from .extract import truncate
from .tasks import Problem, check_generations


@dataclass
class GenerationConfig:
    """How answers are generated: the sampler settings (``steps`` is set per budget), batching, seed."""

    sampling: SamplerSettings = field(default_factory=SamplerSettings)
    batch_size: int = 4
    seed: int = 0


@dataclass
class EvalModel:
    """A model to evaluate: a bidirectional denoiser (``mask_id`` set) or a causal AR baseline."""

    model: torch.nn.Module
    tokenizer: object
    label: str
    mask_id: int | None = None  # None: autoregressive baseline
    shift: bool = False
    settings: SamplerSettings = field(default_factory=SamplerSettings)  # its own: a recipe's or an export's


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _encode(
    tokenizer, prompts: Sequence[str], device, special_tokens: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask [B, P] for a list of prompts (``special_tokens``: with the
    tokenizer's BOS etc., as OpenCompass encodes)."""
    enc = [tokenizer(p, add_special_tokens=special_tokens)["input_ids"] for p in prompts]
    P = max(len(e) for e in enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(enc), P), pad, dtype=torch.long)
    mask = torch.zeros(len(enc), P, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, P - len(e) :] = torch.tensor(e)
        mask[i, P - len(e) :] = 1
    return ids.to(device), mask.to(device)


def _decode(tokenizer, ids: torch.Tensor, stops: Sequence[str]) -> list[str]:
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [truncate(t, stops) for t in texts]


@torch.no_grad()
def diffusion_generations(
    em: EvalModel, problems: Sequence[Problem], steps: int, cfg: GenerationConfig
) -> tuple[list[str], list[int]]:
    """One answer per problem from the diffusion sampler with ``steps`` forward passes, and the
    forward passes (NFE) each answer needed (fewer than ``steps`` under a threshold)."""
    answers, nfe = diffusion_answer_ids(em, problems, steps, cfg)
    texts = em.tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [truncate(t, p.stop) for t, p in zip(texts, problems)], nfe


@torch.no_grad()
def diffusion_answer_ids(
    em: EvalModel, problems: Sequence[Problem], steps: int, cfg: GenerationConfig
) -> tuple[list[list[int]], list[int]]:
    """The answer token ids (``gen_length`` each, before decoding) and NFE of every problem.

    A model whose forward takes no ``position_ids`` (remote code such as LLaDA's original)
    would see a left-padded row's positions shifted, so its prompts run in groups of equal
    token length (no padding at all) instead of ``cfg.batch_size`` at a time in order."""
    device = next(em.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    settings = cfg.sampling.replace(steps=steps)
    eos = em.tokenizer.eos_token_id
    out: dict[int, tuple[list[int], int]] = {}
    for chunk in _prompt_batches(em, problems, cfg.batch_size):
        first = problems[chunk[0]]
        ids, mask = _encode(em.tokenizer, [problems[i].prompt for i in chunk], device, first.special_tokens)
        seq, stats = generate(
            em.model,
            ids,
            settings,
            attention_mask=mask,
            mask_id=em.mask_id,
            shift=em.shift,
            eos_id=eos,
            generator=gen,
            return_stats=True,
        )
        out.update(zip(chunk, zip(seq[:, ids.shape[1] :].tolist(), stats.nfe.tolist())))
    return [out[i][0] for i in range(len(problems))], [out[i][1] for i in range(len(problems))]


def _prompt_batches(em: EvalModel, problems: Sequence[Problem], size: int) -> list[list[int]]:
    """Batches of problem indices: in order, or grouped by prompt length when the model takes no position_ids."""
    order = list(range(len(problems)))
    if accepts(em.model, "position_ids"):
        return [list(b) for b in _batches(order, size)]
    groups: dict[int, list[int]] = {}
    for i in order:
        p = problems[i]
        n = len(em.tokenizer(p.prompt, add_special_tokens=p.special_tokens)["input_ids"])
        groups.setdefault(n, []).append(i)
    return [list(b) for g in groups.values() for b in _batches(g, size)]


@torch.no_grad()
def autoregressive_generations(em: EvalModel, problems: Sequence[Problem], cfg: GenerationConfig) -> list[str]:
    """Greedy left-to-right decoding of the original causal model (the baseline row)."""
    device = next(em.model.parameters()).device
    out = []
    for chunk in _batches(problems, cfg.batch_size):
        ids, mask = _encode(em.tokenizer, [p.prompt for p in chunk], device, chunk[0].special_tokens)
        kw = dict(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=cfg.sampling.gen_length,
            do_sample=False,
            pad_token_id=em.tokenizer.pad_token_id or em.tokenizer.eos_token_id,
        )
        try:  # stop early at the stop strings (the text is cut at them below either way)
            seq = em.model.generate(**kw, stop_strings=list(chunk[0].stop) or None, tokenizer=em.tokenizer)
        except ValueError:  # a tokenizer whose vocabulary transformers cannot map to strings
            seq = em.model.generate(**kw)
        out += _decode(em.tokenizer, seq[:, ids.shape[1] :], chunk[0].stop)
    return out


def _settings_record(settings: SamplerSettings) -> dict:
    """What a sample row records of how it was sampled (the resolved sampler included)."""
    return {**dataclasses.asdict(settings), "sampler": settings.resolved_sampler}


def _done_keys(path: Path) -> set[tuple]:
    """Keys of the samples already in ``path``; a line cut by an interruption is dropped (its
    sample is redone), so later appends start on a fresh line."""
    if not path.exists():
        return set()
    keys, good = set(), []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        keys.add((r["label"], r["steps"], r["task_id"]))
        good.append(line)
    text = "".join(line + "\n" for line in good)
    if path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return keys


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_evaluation(
    models: Sequence[EvalModel],
    problems: Sequence[Problem],
    *,
    steps: Sequence[int],
    cfg: GenerationConfig,
    out_dir: str | Path,
    rank: int = 0,
    world_size: int = 1,
    timeout: float | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Evaluate every model (diffusion models at every budget in ``steps``; AR models once).

    Writes ``samples[.rankR].jsonl`` (one row per sample, appended as batches finish) under
    ``out_dir``; returns that file. Call ``summary.summarize_run(out_dir)`` on one process afterwards.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("samples.jsonl" if world_size == 1 else f"samples.rank{rank}.jsonl")
    done = _done_keys(path)
    mine = list(problems)[rank::world_size]
    exec_kw = {} if timeout is None else {"timeout": timeout}
    jobs = [(em, s) for em in models for s in ([None] if em.mask_id is None else steps)]
    variant = cfg.sampling.variant  # cache / threshold runs get their own rows (and resume keys)
    bar = progress_bar(total=len(jobs) * len(mine), desc="eval", disable=not progress or rank != 0)
    for em, s in jobs:
        label = em.label if s is None or not variant else f"{em.label} [{variant}]"
        todo = [p for p in mine if (label, s, p.task_id) not in done]
        bar.update(len(mine) - len(todo))
        for chunk in _batches(todo, max(cfg.batch_size, 1)):
            texts, nfe = (
                (autoregressive_generations(em, chunk, cfg), [None] * len(chunk))
                if s is None
                else diffusion_generations(em, chunk, s, cfg)
            )
            records = check_generations(chunk, texts, workers=workers, **exec_kw)
            used = None if s is None else _settings_record(cfg.sampling.replace(steps=s))
            # What `xdlm-tune compare` checks two runs against: the prompt format and the sampler;
            # the seed and batch size are recorded for the invariance checks and for reading.
            rows = [
                {
                    "label": label,
                    "steps": s,
                    "nfe": n,
                    "sampler": used,
                    "prompt": p.prompt,
                    "prompt_format": p.prompt_format,
                    "seed": cfg.seed,
                    "batch_size": cfg.batch_size,
                    "generation": t,
                    **r,
                    "data": p.source,
                }
                for p, t, n, r in zip(chunk, texts, nfe, records)
            ]
            _append(path, rows)
            bar.update(len(chunk))
            bar.set_postfix(model=label, steps=s if s is not None else "AR")
    bar.close()
    return path
