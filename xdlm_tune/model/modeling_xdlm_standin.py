"""A tiny bidirectional denoiser with its own modeling code: the stand-in for remote-code diffusion
bases (`xdlm-tune train --dry-run`, tests). `model/tiny.py`'s `save_remote_stand_in` copies this file
beside the weights, and the checkpoint is loaded with trust_remote_code=True, as such bases are.

Its forward has the signature of LLaDA's original one (no **kwargs, no position_ids, no
logits_to_keep) and exposes no hidden states, so a call that passes anything else fails here as it
would there. Self-contained on purpose: the copy in a checkpoint imports only torch and transformers.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput


class XdlmStandInConfig(PretrainedConfig):
    model_type = "xdlm_standin"

    def __init__(self, vocab_size=264, hidden_size=64, n_layers=2, n_heads=4, max_positions=256, **kwargs):
        self.vocab_size, self.hidden_size, self.n_layers = vocab_size, hidden_size, n_layers
        self.n_heads, self.max_positions = n_heads, max_positions
        super().__init__(**kwargs)


class Block(GradientCheckpointingLayer):
    """Pre-norm attention + MLP: x [B, L, D], attention_mask [B, L] (1 = real token) -> [B, L, D]."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.up_proj, self.down_proj = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)

    def forward(self, x, attention_mask=None):
        B, L, D = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(B, L, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # bidirectional
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, L, D))
        return x + self.down_proj(F.gelu(self.up_proj(self.norm2(x))))


class XdlmStandInModel(PreTrainedModel):
    config_class = XdlmStandInConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_positions, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config.hidden_size, config.n_heads) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.ff_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def get_output_embeddings(self):
        return self.ff_out

    def forward(
        self,
        input_ids=None,
        inputs_embeds=None,
        attention_mask=None,
        attention_bias=None,
        past_key_values=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        """input_ids [B, L] -> CausalLMOutput(logits [B, L, V]). The parameters are those of LLaDA's
        original LLaDAModelLM.forward (cache_position aside): no **kwargs, on purpose."""
        if inputs_embeds is not None or attention_bias is not None or past_key_values is not None:
            raise NotImplementedError("the stand-in takes input_ids and attention_mask only")
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)[None]
        for block in self.blocks:
            x = block(x, attention_mask)
        return CausalLMOutput(logits=self.ff_out(self.ln_f(x)))
