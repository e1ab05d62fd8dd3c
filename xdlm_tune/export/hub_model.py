"""The model class of an exported folder's modeling file: the family's causal LM plus `diffusion_generate`.

Not used inside xdlm-tune: `modeling.py` copies this file's code, after the project's own sampler
code, into the `modeling_xdlm.py` of every export, with the import of `_XDLMBase` pointing at the
base family's class (e.g. LlamaForCausalLM) and the intra-package import removed. Attention is
bidirectional because the exported config sets `is_causal: false`, transformers' own switch.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel as _XDLMBase

from ..sampling.generate import generate
from ..sampling.settings import SamplerSettings

XDLM_CONFIG_KEY = "xdlm"


class XDLMForCausalLM(_XDLMBase):
    """A bidirectional XDLM denoiser. `model(input_ids).logits` are its logits (with the config's
    `xdlm.shift`, position i - 1 predicts token i); `diffusion_generate` samples answers."""

    def generate(self, *args, **kwargs):
        """Refused: this is not a left-to-right model, so transformers' `generate` would write
        garbage; `diffusion_generate` samples it."""
        raise NotImplementedError(
            f"{type(self).__name__} is a discrete-diffusion model with bidirectional attention: "
            "transformers' left-to-right `generate()` would write garbage. Call "
            "`model.diffusion_generate(input_ids, attention_mask=..., max_new_tokens=..., steps=...)` "
            "instead (see the model card)."
        )

    @torch.no_grad()
    def diffusion_generate(
        self,
        input_ids,
        attention_mask=None,
        max_new_tokens=None,
        steps=None,
        block_length=None,
        temperature=None,
        top_p=None,
        alg=None,
        *,
        k=None,
        revise_prompt=None,
        final_step=None,
        cache=None,
        refresh=None,
        refresh_every=None,
        threshold=None,
        eos_token_id=None,
        generator=None,
    ):
        """Denoise `max_new_tokens` tokens after each prompt; returns ids [B, P + max_new_tokens]:
        the prompts as given, then the answers (`out[:, P:]`).

        input_ids [B, P], attention_mask [B, P] (1 = real token; padding on either side: a
        right-padded batch is left-aligned inside, so each row equals its prompt alone). `steps` is the
        number of forward passes, split evenly over blocks of `block_length` tokens. `alg`:
        "confidence" (LLaDA-style), "xdlm" (confidence plus revisions under the authors' per-block
        budget int(acc * k / (1 - k))) or "ancestral" (exact XDLM reverse steps; use temperature > 0).
        `revise_prompt`: xdlm may also rewrite prompt tokens (the authors' code does). `final_step`:
        "ancestral" adds the authors' extra step to alpha_s = 1 (one more pass per block).
        `cache`: "none", "prefix" or "dual" (a KV cache inside each block; `refresh` "step" or
        "block" says when a revision of a cached position is recomputed, `refresh_every` adds a full
        pass every N steps, 1 = exactly uncached). `threshold`: reveal every masked position at
        least this confident (confidence / xdlm; blocks may end early).
        Defaults come from the config's `xdlm` block: k, mask id, shift, schedule, eps, and under
        `generation` max_new_tokens, steps, block_length (used when it divides max_new_tokens,
        else one block), temperature, top_p, alg, revise_prompt, final_step, cache, refresh,
        refresh_every and threshold. `eos_token_id`:
        everything after the first EOS becomes EOS. `generator`: a torch.Generator for temperature > 0.
        """
        settings = getattr(self.config, XDLM_CONFIG_KEY, None) or {}
        if "mask_id" not in settings:
            raise ValueError(f"config.{XDLM_CONFIG_KEY} has no mask_id: this checkpoint was not exported by xdlm-tune")
        defaults = settings.get("generation") or {}
        if max_new_tokens is None:
            max_new_tokens = defaults.get("max_new_tokens", 256)
        if block_length is None:
            configured = defaults.get("block_length") or max_new_tokens
            block_length = configured if max_new_tokens % configured == 0 else max_new_tokens
        if steps is None:
            steps = min(defaults.get("steps", max_new_tokens), max_new_tokens)
        chosen = SamplerSettings(
            steps=steps,
            gen_length=max_new_tokens,
            block_length=block_length,
            sampler=alg if alg is not None else defaults.get("alg"),
            temperature=defaults.get("temperature", 0.0) if temperature is None else temperature,
            top_p=defaults.get("top_p", 1.0) if top_p is None else top_p,
            k=settings["k"] if k is None else k,
            schedule=settings.get("schedule", "linear"),
            eps=settings.get("eps", 1e-3),
            revise_prompt=defaults.get("revise_prompt", False) if revise_prompt is None else revise_prompt,
            final_step=defaults.get("final_step", "none") if final_step is None else final_step,
            cache=defaults.get("cache", "none") if cache is None else cache,
            refresh=defaults.get("refresh", "step") if refresh is None else refresh,
            refresh_every=defaults.get("refresh_every") if refresh_every is None else refresh_every,
            threshold=defaults.get("threshold") if threshold is None else threshold,
        )
        device = self.get_input_embeddings().weight.device
        return generate(
            self,
            input_ids.to(device),
            chosen,
            mask_id=settings["mask_id"],
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            shift=bool(settings.get("shift", False)),
            eos_id=eos_token_id,
            generator=generator,
        )
