"""lm-evaluation-harness model ``xdlm``: any lm-eval task for an xdlm-tune denoiser.

    xdlm-tune lm-eval --model_args pretrained=runs/x/export,steps=32,block_length=32 --tasks mbpp_local

* ``generate_until``: ``xdlm_tune.sampling.generate`` with the model_args' step budget and sampler;
  the task's ``max_gen_toks`` (or model_args ``gen_length``) is the generation length, rounded up to
  a multiple of ``block_length``; the answer is cut at the task's ``until`` strings.
* ``loglikelihood``: minus a Monte-Carlo estimate of the XDLM bound on -log p(continuation | context)
  (``lm_eval/likelihood.py``): a lower bound on the log-likelihood in expectation.
* ``loglikelihood_rolling``: the same bound summed over disjoint windows of ``max_length`` tokens.

``pretrained`` is anything ``xdlm-tune eval`` loads: ``smollm2-135m``, a Hub id or folder of a causal
base (converted on the fly, untrained), an xdlm-tune export, a training run or checkpoint folder; or,
from Python, an ``EvalModel``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import typing
from pathlib import Path

import lm_eval.models  # noqa: F401  lm-eval fills its model registry only while it is empty: keep hf & co.
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from ..config.sampler import _SETTING_HINTS, ALIASES, SETTING_NAMES, _allowed_values, _nullable
from ..evaluation.extract import truncate
from ..evaluation.harness import EvalModel
from ..sampling import generate
from .likelihood import BoundSettings, nelbo_draws, output_size

logger = logging.getLogger(__name__)


class ModelArgError(ValueError):
    """A bad ``--model_args`` value; the message names the field and the fix."""


class LocalDataError(ValueError):
    """A shipped task's local data file is missing or malformed (raised by tasks/utils.py)."""


def _typed(name: str, value, kind, *, lo=None, hi=None, optional: bool = False):
    """``value`` (often a string from the command line) as ``kind``, checked against [lo, hi]."""
    if value is None or (optional and value in ("", "None", "none", "null")):
        if optional:
            return None
        raise ModelArgError(f"model_args {name}: required")
    try:
        if kind is bool:
            out = value if isinstance(value, bool) else {"true": True, "false": False}[str(value).lower()]
        else:
            out = kind(value)
            if kind is int and isinstance(value, float) and value != out:
                raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ModelArgError(f"model_args {name}={value!r}: expected {kind.__name__}") from None
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise ModelArgError(f"model_args {name}={value!r}: must be in [{lo}, {hi if hi is not None else 'inf'}]")
    return out


def _setting(name: str, value):
    """A model_args value (often a string) typed as the SamplerSettings field it sets."""
    tp = _SETTING_HINTS[ALIASES.get(name, name)]
    choices = _allowed_values(tp)
    if choices:
        if value in (None, "None", "none", "null") and _nullable(tp):
            return None
        if value not in choices:
            raise ModelArgError(f"model_args {name}={value!r}: choose one of {', '.join(map(str, choices))}")
        return value
    core = [a for a in typing.get_args(tp) or (tp,) if a is not type(None)]
    kind = int if int in core else float if float in core else bool
    return _typed(name, value, kind, optional=_nullable(tp))


def _is_training_output(path: str) -> bool:
    """A run folder (holds checkpoint-*) or a checkpoint folder, as `xdlm-tune export` takes."""
    from ..checkpoints.load import find_checkpoint
    from ..checkpoints.protocol import CheckpointError

    if not Path(path).is_dir() or (Path(path) / "config.json").is_file():
        return False
    try:
        find_checkpoint(path)
    except CheckpointError:
        return False
    return True


def load_model(
    pretrained,
    device: torch.device,
    *,
    kind=None,
    mask_id=None,
    shift=None,
    dtype=None,
    trust_remote_code=False,
    attn_implementation="sdpa",
) -> EvalModel:
    """The denoiser for ``pretrained`` through the loaders `xdlm-tune eval` uses."""
    from ..evaluation.load import checkpoint_model, load_diffusion_model

    if isinstance(pretrained, EvalModel):
        return pretrained
    if _is_training_output(str(pretrained)):
        return checkpoint_model(pretrained, device)
    args = argparse.Namespace(
        checkpoint=None,
        model=str(pretrained),
        kind=kind,
        mask_id=mask_id,
        shift=shift,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        attn_implementation=attn_implementation,
        label=None,
    )
    return load_diffusion_model(args, device)


@register_model("xdlm")
class XDLMLM(LM):
    """See the module docstring; every keyword is a ``--model_args`` field."""

    def __init__(
        self,
        pretrained="smollm2-135m",
        *,
        mc_num=128,
        mc_batch_size=32,
        max_length=None,
        seed=1234,
        batch_size=1,
        max_batch_size=None,
        device=None,
        dtype=None,
        kind=None,
        mask_id=None,
        shift=None,
        trust_remote_code=False,
        attn_implementation="sdpa",
        **sampler_args,
    ):
        """``sampler_args``: any SamplerSettings field (steps=, sampler=, k=, cache=, ...; the aliases
        max_new_tokens / alg too) over the model's own settings (an export's config.json, a run's recipe)."""
        super().__init__()
        unknown = sorted(set(sampler_args) - set(SETTING_NAMES) - set(ALIASES))
        if unknown:
            known = ("pretrained", "mc_num", "mc_batch_size", "max_length", "seed", "dtype", "kind", "mask_id", "shift")
            raise ModelArgError(
                f"model_args {', '.join(unknown)}: unknown for --model xdlm; known: {', '.join(known)}, "
                f"trust_remote_code, attn_implementation, and the sampler settings {', '.join(SETTING_NAMES)}"
            )
        given = {ALIASES.get(name, name): _setting(name, value) for name, value in sampler_args.items()}
        if str(batch_size).startswith("auto"):
            raise ModelArgError("--batch_size auto is not supported by --model xdlm: give a number of prompts")
        self.batch_size = _typed("batch_size", batch_size, int, lo=1)
        self.seed = _typed("seed", seed, int)
        self._rank, self._world_size, self._device = self._process(device)
        self.em = load_model(
            pretrained,
            self._device,
            kind=kind,
            dtype=dtype,
            mask_id=_typed("mask_id", mask_id, int, lo=0, optional=True),
            shift=_typed("shift", shift, bool, optional=True),
            trust_remote_code=_typed("trust_remote_code", trust_remote_code, bool),
            attn_implementation=attn_implementation,
        )
        # The model's own settings, model_args on top; each request sets its length (and maybe temperature).
        self.sampling = self.em.settings.replace(**given)
        self.gen_length = given.get("gen_length")  # None: each request's max_gen_toks
        self.block_length, self.steps, self.k = self.sampling.block_length, self.sampling.steps, self.sampling.k
        try:  # every rule but the length's, which each request sets
            self.sampling.replace(gen_length=self.steps * (self.block_length or 1)).check()
        except ValueError as err:
            raise ModelArgError(f"model_args: {err}") from None
        self.bound = BoundSettings(
            k=self.k,
            mc_num=_typed("mc_num", mc_num, int, lo=1),
            batch_size=_typed("mc_batch_size", mc_batch_size, int, lo=1),
            schedule=self.sampling.schedule,
            eps=self.sampling.eps,
            seed=self.seed,
        )
        config = getattr(self.em.model, "config", None)
        self.max_length = _typed(
            "max_length",
            max_length if max_length is not None else getattr(config, "max_position_embeddings", 2048),
            int,
            lo=2,
        )
        self.vocab_size = output_size(self.em.model)
        tok = self.em.tokenizer
        self.prefix_token_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self._rounding_noted: set[tuple[int, int]] = set()

    # ------------------------------------------------------------------ processes (accelerate launch)
    @staticmethod
    def _process(device):
        from ..evaluation.load import _process_state

        state = _process_state()
        if state.num_processes > 1:
            return state.process_index, state.num_processes, state.device
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's default --device is cuda
        return 0, 1, torch.device(device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor.reshape(-1)) for _ in range(self._world_size)]
        torch.distributed.all_gather(parts, tensor.reshape(-1))
        return torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self._world_size == 1:
            return [obj]
        out = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self._world_size > 1:
            torch.distributed.barrier()

    # ------------------------------------------------------------------ chat templates
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.em.tokenizer, "name_or_path", "xdlm")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.em.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ------------------------------------------------------------------ likelihood
    def _tokens(self, text: str) -> list[int]:
        return self.em.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids), split as lm-eval's HF model does: the context's trailing
        spaces go to the continuation, which is the tail of the whole text's encoding."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:
            return [self.prefix_token_id], self._tokens(continuation)
        whole, ctx = self._tokens(context + continuation), self._tokens(context)
        return ctx, whole[len(ctx) :]

    def _log_bound(self, context: list[int], target: list[int]) -> float:
        """Minus the estimated bound of ``target`` given ``context`` (left-truncated to max_length)."""
        context = context[max(0, len(context) + len(target) - self.max_length) :]
        if not context and self.em.shift:
            context = [self.prefix_token_id]
        draws = nelbo_draws(
            self.em.model,
            context,
            target,
            mask_id=self.em.mask_id,
            shift=self.em.shift,
            settings=self.bound,
            vocab_size=self.vocab_size,
        )
        return -float(draws.mean())

    def likelihood_cost(self, n_bounds: int) -> str:
        """What `n_bounds` bound estimates cost, in forward passes (each estimate is mc_num draws in
        batches of mc_batch_size rows): the line printed before the work starts."""
        per = math.ceil(self.bound.mc_num / self.bound.batch_size)
        return (
            f"xdlm likelihood: {n_bounds} bound estimate(s) x mc_num={self.bound.mc_num} Monte-Carlo draws = "
            f"{n_bounds * per:,} forward passes of up to mc_batch_size={self.bound.batch_size} rows "
            f"({n_bounds * self.bound.mc_num:,} sequences); `steps` does not apply to likelihood tasks. "
            "For a smoke run, lower the draws: --model_args ...,mc_num=8"
        )

    def _say_cost(self, n_bounds: int) -> None:
        if self._rank == 0:
            print(self.likelihood_cost(n_bounds), file=sys.stderr, flush=True)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(lower bound on log p(continuation | context), False) per request: is_greedy is not computed."""
        memo: dict[tuple, float] = {}
        out = []
        self._say_cost(len({tuple(req.args) for req in requests}))
        for req in tqdm(requests, desc="xdlm loglikelihood", disable=disable_tqdm or self._rank != 0):
            context, continuation = req.args
            ctx, tgt = self._encode_pair(context, continuation)
            key = (tuple(ctx), tuple(tgt))
            if key not in memo:
                memo[key] = self._log_bound(ctx, tgt)
            out.append((memo[key], False))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), out[-1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Per document: minus the bound summed over disjoint windows of max_length tokens, each given
        the token before it (lm-eval's rolling windows with context_len=1)."""
        out = []
        # lm-eval's rolling windows: max_length - 1 new tokens each
        self._say_cost(sum(max(1, math.ceil(len(self._tokens(r.args[0])) / (self.max_length - 1))) for r in requests))
        for req in tqdm(requests, desc="xdlm loglikelihood_rolling", disable=disable_tqdm or self._rank != 0):
            (text,) = req.args
            windows = map(
                make_disjoint_window,
                get_rolling_token_windows(self._tokens(text), self.prefix_token_id, self.max_length - 1, 1),
            )
            total = sum(self._log_bound(list(ctx), list(tgt)) for ctx, tgt in windows)
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    # ------------------------------------------------------------------ generation
    def _gen_length(self, max_gen_toks: int) -> int:
        """The task's max_gen_toks (or model_args gen_length), rounded up to a multiple of block_length."""
        length = self.gen_length or int(max_gen_toks)
        block = self.block_length or length
        rounded = math.ceil(length / block) * block
        if rounded != length and (length, rounded) not in self._rounding_noted:
            self._rounding_noted.add((length, rounded))
            logger.warning(
                "xdlm: generation length %d rounded up to %d, a multiple of block_length=%d", length, rounded, block
            )
        n_blocks = rounded // block
        if self.steps > rounded or self.steps % n_blocks:
            raise ModelArgError(
                f"model_args steps={self.steps}: must be <= the generation length {rounded} and a multiple of "
                f"its {n_blocks} block(s) of block_length={block}; change steps, block_length or gen_length"
            )
        return rounded

    def _temperature(self, gen_kwargs: dict) -> float:
        """The task's temperature if it sets one (0 when it sets do_sample: false), else model_args'."""
        if "temperature" in gen_kwargs:
            return float(gen_kwargs["temperature"])
        return 0.0 if gen_kwargs.get("do_sample") is False else self.sampling.temperature

    def _left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        P = max(len(p) for p in prompts)
        tok = self.em.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(prompts), P), pad, dtype=torch.long)
        mask = torch.zeros(len(prompts), P, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, P - len(p) :] = 1
        return ids.to(self._device), mask.to(self._device)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """One answer per request: ``steps`` forward passes; cut at the request's ``until`` strings."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # one batch shares its generation settings
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc="xdlm generate_until", disable=disable_tqdm or self._rank != 0)
        gen = torch.Generator(device=self._device).manual_seed(self.seed)
        tok = self.em.tokenizer
        for idxs in groups.values():
            kwargs = dict(requests[idxs[0]].args[1])
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            length = self._gen_length(kwargs.get("max_gen_toks", 256))
            stops = [ids for ids in (self._tokens(s) for s in until) if ids]
            idxs = sorted(idxs, key=lambda i: -len(requests[i].args[0]))  # similar lengths pad less
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start : start + self.batch_size]
                keep = max(1, self.max_length - length)  # left-truncate long prompts
                prompts = [self._tokens(requests[i].args[0])[-keep:] for i in chunk]
                ids, mask = self._left_padded(prompts)
                settings = self.sampling.replace(
                    gen_length=length, block_length=self.block_length or length, temperature=self._temperature(kwargs)
                )
                seq = generate(
                    self.em.model,
                    ids,
                    settings,
                    mask_id=self.em.mask_id,
                    attention_mask=mask,
                    shift=self.em.shift,
                    eos_id=tok.eos_token_id,
                    stop_sequences=stops,
                    generator=gen,
                )
                texts = tok.batch_decode(seq[:, ids.shape[1] :], skip_special_tokens=True)
                for i, text in zip(chunk, texts):
                    out[i] = truncate(text, until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(chunk))
        bar.close()
        return out
