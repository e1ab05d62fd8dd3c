"""Sampling throughput: batched ``generate`` vs a straightforward per-sample loop, same run.

One command:  python benchmarks/sampling_speed.py [--save]   (`--quick` for a smoke run)

The model has SmolLM2-135M's architecture (Llama, 30 layers, hidden 576, vocab 49152) with
random weights: speed does not depend on the weights, and no download is needed. Both sides
run the same sampler with the same step budget; the reference calls ``generate`` once per
prompt. Tokens/s counts generated answer tokens.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xdlm_tune.sampling import generate

ROOT = Path(__file__).resolve().parents[1]


def smollm2_shaped(layers: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    cfg.is_causal = False
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--sampler", default="xdlm")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.prompt, args.gen, args.steps, args.layers = 4, 16, 16, 8, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = smollm2_shaped(args.layers).to(device, dtype)
    mask_id = 49151
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.prompt // 2, args.prompt + 1, (args.batch,), generator=g)
    prompts = [torch.randint(3, 49000, (int(n),), generator=g).to(device) for n in lengths]
    batch = torch.zeros(args.batch, args.prompt, dtype=torch.long, device=device)
    attn = torch.zeros_like(batch)
    for i, p in enumerate(prompts):  # left padding
        batch[i, args.prompt - len(p):], attn[i, args.prompt - len(p):] = p, 1
    kw = dict(steps=args.steps, gen_length=args.gen, sampler=args.sampler, temperature=0.0, k=0.1, mask_id=mask_id)

    generate(model, batch[:1, -4:], **{**kw, "steps": 1, "gen_length": 4})  # warm-up
    t_batched = timed(lambda: generate(model, batch, attention_mask=attn, **kw))
    t_loop = timed(lambda: [generate(model, p[None], **kw) for p in prompts])
    n_tokens = args.batch * args.gen
    hw = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    report = (
        f"Sampler {args.sampler}, {args.steps} steps, batch {args.batch}, prompt <= {args.prompt}, gen {args.gen}; "
        f"SmolLM2-135M-shaped Llama ({args.layers} layers, random weights), {dtype}; device: {hw}; torch {torch.__version__}\n\n"
        "| method | time (s) | tokens/s |\n|---|---|---|\n"
        f"| per-sample loop (reference) | {t_loop:.2f} | {n_tokens / t_loop:.1f} |\n"
        f"| batched generate | {t_batched:.2f} | {n_tokens / t_batched:.1f} |\n\n"
        f"Speed-up (batched / per-sample): {t_loop / t_batched:.2f}x\n"
    )
    print(report)
    if args.save:
        path = ROOT / "benchmarks" / "results" / f"sampling_speed_{'cuda' if device == 'cuda' else 'cpu'}.md"
        path.write_text("# benchmarks/sampling_speed.py\n\n" + report)
        print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
