"""The model class of an exported folder's modeling file: the family's causal LM plus `diffusion_generate`.

Not used inside xdlm-tune: `modeling.py` copies this file's code, after the project's own sampler
code, into the `modeling_xdlm.py` of every export, with the import of `_XDLMBase` pointing at the
base family's class (e.g. LlamaForCausalLM) and the intra-package import removed. Attention is
bidirectional because the exported config sets `is_causal: false`, transformers' own switch.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel as _XDLMBase

from ..config.sampler import SamplerSettings
from ..sampling.generate import generate

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
    def diffusion_generate(self, input_ids, attention_mask=None, *, eos_token_id=None, generator=None, **overrides):
        """Denoise an answer after each prompt; returns ids [B, P + gen_length]: the prompts as given,
        then the answers (`out[:, P:]`).

        input_ids [B, P], attention_mask [B, P] (1 = real token; padding on either side: a
        right-padded batch is left-aligned inside, so each row equals its prompt alone).
        The settings are config.json's `xdlm.sampler` (a `SamplerSettings`, defined above in this
        file with every field's meaning) with `overrides` applied: `settings.replace(**overrides)`,
        so any of its fields may be given (steps=, gen_length=, block_length=, sampler=,
        temperature=, cache=, ...), and `max_new_tokens` / `alg` are accepted as the aliases of
        `gen_length` / `sampler` (Dream's names). `eos_token_id`: everything after the first EOS
        becomes EOS. `generator`: a torch.Generator for temperature > 0.
        """
        block = getattr(self.config, XDLM_CONFIG_KEY, None) or {}
        if "mask_id" not in block or "sampler" not in block:
            raise ValueError(
                f"config.{XDLM_CONFIG_KEY} has no mask_id / sampler settings: this checkpoint was not exported by "
                "xdlm-tune (or by a version older than its modeling file)"
            )
        settings = self.sampler_settings(**overrides)
        device = self.get_input_embeddings().weight.device
        return generate(
            self,
            input_ids.to(device),
            settings,
            mask_id=block["mask_id"],
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            shift=bool(block.get("shift", False)),
            eos_id=eos_token_id,
            generator=generator,
        )

    def sampler_settings(self, **overrides) -> SamplerSettings:
        """The `SamplerSettings` that `diffusion_generate(ids, **overrides)` runs (checked)."""
        stored = (getattr(self.config, XDLM_CONFIG_KEY, None) or {}).get("sampler") or {}
        return SamplerSettings.from_dict(stored).replace(**overrides).check()
