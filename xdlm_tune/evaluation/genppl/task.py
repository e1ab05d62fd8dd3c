"""The recipe's `genppl` eval task: what training did, as generation quality.

`xdlm-tune run` (and `make demo`) with ``eval.tasks: [..., genppl]`` samples the untrained
conversion (the recipe's base made bidirectional, given its mask token, no training) and the
run's newest checkpoint on the same held-out prefixes of the recipe's data, with the exact
reverse process (sampler ancestral, temperature 1: how gen-PPL is measured) at each of
``eval.steps``, and scores both under the base model as the AR judge, next to the judge's own
greedy and sampled continuations. Writes genppl.md, genppl.json, genppl.png and
samples_genppl.jsonl under ``out``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..harness import EvalModel, GenerationConfig
from .entry import CODE_SOURCES, generation_metrics, is_sft, make_prefixes
from .metrics import GenRow, genppl_settings, markdown_table, write_outputs


def untrained_model(recipe, device: torch.device, *, dtype: str | None = None) -> EvalModel:
    """The recipe's base converted into a denoiser exactly as training starts (bidirectional, mask
    token, shift), with no training: the reference row for what training did."""
    from ...model import prepare_model
    from ...model.prepare import model_options

    # training's own mapping, less what only training adds (LoRA starts at zero; no quantized copy, no
    # gradient checkpointing for inference)
    options = {
        k: v for k, v in model_options(recipe).items() if k not in ("lora", "gradient_checkpointing", "quantization")
    }
    pm = prepare_model(
        **{**options, "dtype": dtype or recipe.model.dtype}, trust_remote_code=recipe.model.trust_remote_code
    )
    return EvalModel(
        pm.model.to(device).eval(),
        pm.tokenizer,
        "untrained",
        mask_id=pm.mask_id,
        shift=pm.shift,
        settings=recipe.sampler_settings(),
    )


def run_genppl_task(recipe, checkpoint: Path, device: torch.device, out: Path) -> dict:
    """Rows for the AR judge (reference), the untrained conversion and ``checkpoint`` at every
    budget of ``recipe.eval.steps``; returns {"table", "files", "plot", "rows"} (``table`` untitled)."""
    from ..load import ar_baseline_model, checkpoint_model

    ev, m = recipe.eval, recipe.model
    if m.kind != "causal":
        raise ValueError(
            "eval.tasks: genppl scores samples under the recipe's base as the AR judge, but model.kind is "
            f"{m.kind!r} (a diffusion base cannot judge); use `xdlm-tune eval --benchmark genppl --judge ...`"
        )
    judge = ar_baseline_model(
        m.name_or_path,
        device,
        label=f"{Path(m.name_or_path).name} (AR judge)",
        dtype=m.dtype,
        attn_implementation=m.attn_implementation or "sdpa",
        gguf_file=m.gguf_file,
        trust_remote_code=m.trust_remote_code,
    )
    trained = checkpoint_model(checkpoint, device, label=f"xdlm k={recipe.diffusion.k:g} (trained)")
    prefixes = make_prefixes(
        trained.tokenizer, recipe=recipe, n=ev.genppl_samples, prefix_tokens=ev.genppl_prefix_tokens
    )
    cfg = GenerationConfig(
        sampling=genppl_settings(recipe.sampler_settings()), batch_size=ev.batch_size, seed=recipe.training.seed
    )
    code = recipe.data.source in CODE_SOURCES
    out.mkdir(parents=True, exist_ok=True)
    samples_file = out / "samples_genppl.jsonl"
    samples_file.write_text("")
    common = dict(steps=ev.steps, cfg=cfg, code=code, samples_file=samples_file, compile_prefix=not is_sft(recipe))
    rows: list[GenRow] = generation_metrics(trained, judge, prefixes, reference=True, **common)
    del trained
    untrained = untrained_model(recipe, device)
    n_ref = len(rows) - len(ev.steps)  # the judge's rows first, then untrained, then trained
    rows[n_ref:n_ref] = generation_metrics(untrained, judge, prefixes, reference=False, **common)
    title = (
        f"genppl: gen-PPL under {judge.label}, {len(prefixes)} held-out prefixes, {ev.gen_length} tokens, "
        "sampler ancestral, temperature 1"
    )
    paths = write_outputs(rows, out, title)
    return {
        "table": markdown_table(rows),  # the printed table; genppl.md carries the title
        "files": [samples_file, paths["json"]],
        "plot": paths["png"],
        "rows": rows,
    }
