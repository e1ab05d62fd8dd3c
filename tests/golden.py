"""A fixed tiny training run whose loss and held-out NELBO are pinned in tests/data/golden_train.json.

Everything the run depends on is fixed here or checked in: a 2-layer Llama whose weights are a
formula of their position (not an initializer, so no library's init scheme enters), the byte-level
tokenizer of xdlm_tune/model/tiny.py, the corpus tests/data/golden_corpus.jsonl (not this Python's
stdlib), and the recipe below, run through the real loop (xdlm_tune.train.loop.train) in float32 on CPU.

When a change is meant to move these numbers (noise keying, data order, the schedule, ...):

    python tests/golden.py --write      # rerun the run, rewrite golden_train.json

and say in the commit why they moved.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden_train.json"
CORPUS = HERE / "data" / "golden_corpus.jsonl"
RTOL = 1e-5  # float32 on CPU; thread counts change reduction order by ~1e-7

OVERRIDES = [
    "model.dtype=float32",
    "model.attn_implementation=sdpa",
    "lora.enabled=false",
    "diffusion.k=0.1",
    "diffusion.schedule=linear",
    "diffusion.loss_weighting=elbo",
    "diffusion.antithetic=true",
    "data.mode=pretrain",
    f"data.source={CORPUS}",
    "data.seq_len=32",
    "data.eval_holdout=4",
    "training.max_steps=4",
    "training.per_device_batch_size=2",
    "training.grad_accum=2",
    "training.lr=1e-2",
    "training.warmup_steps=1",
    "training.lr_scheduler=cosine",
    "training.weight_decay=0.01",
    "training.max_grad_norm=1.0",
    "training.seed=0",
    "training.log_every=1",
    "training.eval_every=2",
    "training.eval_batches=1",
    "training.save_every=0",
    "training.keep_last=1",
]


def write_model(folder: Path) -> Path:
    """The fixed base: weights w[i] = scale * sin(1.3 i + 0.7 p) over parameter p's flat index i."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from xdlm_tune.model.tiny import byte_tokenizer

    tok = byte_tokenizer()  # no mask token: the library adds one
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p_index, (name, param) in enumerate(sorted(model.named_parameters())):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            i = torch.arange(param.numel(), dtype=torch.float64)
            scale = 0.5 / math.sqrt(param.shape[-1])
            param.copy_((scale * torch.sin(1.3 * i + 0.7 * p_index)).reshape(param.shape).to(param.dtype))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def golden_run(workdir: Path, extra: tuple[str, ...] = ()) -> dict:
    """Run the fixed recipe (plus `extra` overrides) in `workdir`; the values golden_train.json pins."""
    import torch

    from xdlm_tune.config import load_recipe
    from xdlm_tune.train.loop import train

    model = write_model(workdir / "base")
    recipe = load_recipe(
        None, [f"model.name_or_path={model}", f"training.output_dir={workdir / 'run'}", *OVERRIDES, *extra]
    )
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        result = train(recipe)
    finally:
        torch.use_deterministic_algorithms(previous)
    return {
        "loss": {str(step): loss for step, loss in sorted(result.losses.items())},
        "heldout_nelbo": {str(step): ev["nelbo"] for step, ev in sorted(result.evals.items())},
    }


def mismatches(values: dict, golden: dict, rtol: float = RTOL) -> list[str]:
    """Every pinned value that `values` misses by more than rtol (relative), as readable lines."""
    out = []
    for metric in ("loss", "heldout_nelbo"):
        if values[metric].keys() != golden[metric].keys():
            out.append(f"{metric}: steps {sorted(values[metric])} != pinned {sorted(golden[metric])}")
            continue
        for step, want in golden[metric].items():
            got = values[metric][step]
            if not math.isclose(got, want, rel_tol=rtol, abs_tol=0.0):
                out.append(
                    f"{metric} at step {step}: {got:.9g}, pinned {want:.9g} (rel. diff {abs(got - want) / abs(want):.2e})"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN.relative_to(HERE.parent)}")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xdlm-golden-") as tmp:
        values = golden_run(Path(tmp))
    import torch
    import transformers

    text = (
        json.dumps(
            {
                **values,
                "generated_with": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "python": sys.version.split()[0],
                },
            },
            indent=1,
        )
        + "\n"
    )
    if args.write:
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
