"""xdlm-tune: turn a pretrained LLM into an XDLM discrete-diffusion sampler."""

__version__ = "0.1.0"
