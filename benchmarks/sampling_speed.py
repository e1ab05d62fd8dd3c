"""Sampling speed: KV cache (none / prefix / dual) x confidence threshold, on the real SmolLM2.

One command (the issue's grid; every ratio is to `none` measured in the same run):

    python benchmarks/sampling_speed.py --save

prints, per prompt (a short one and the 3-shot MBPP prompt, ~600 tokens) and batch size (1 and 8):
wall time, answer tokens/s, NFE (forward passes per sample), full passes (block starts and
refreshes, `refresh` step / block), tokens run through the model per sample, the speed-up over
`none`, the agreement of the answer tokens with `none` at the same threshold (temperature 0) and
the share of answer tokens that are EOS (a trained SFT model pads its answers with EOS, and EOS
is easy to be confident about). `--prompts sft` adds MBPP test problems in the SFT recipe's
zero-shot training format. The model is the embedded `smollm2-135m` converted into a denoiser
(bidirectional + mask token, untrained: an untrained denoiser is rarely confident, so the
threshold rows say little here; `--model` takes a trained export). Smaller grids for a slow CPU:
`--gen 64 --block 32 --steps 8`, `--max-tokens` skips batches whose full pass is longer.
`--batching` instead compares batched `generate` with a per-sample loop (random-weight model).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from xdlm_tune.sampling import generate

ROOT = Path(__file__).resolve().parents[1]
SHORT_PROMPTS = [
    "def fibonacci(n):",
    "def is_prime(n):",
    "def reverse_words(s):",
    "def flatten(xs):",
    "def gcd(a, b):",
    "def count_vowels(s):",
    "def median(xs):",
    "def to_binary(n):",
]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def eos_share(answer: torch.Tensor, eos_id: int | None) -> str:
    """The share of answer tokens [B, G] that are EOS ("-" for a tokenizer without one)."""
    return "-" if eos_id is None else f"{(answer == eos_id).float().mean().item():.2f}"


def encode(tok, texts, device):
    """Left-padded ids and mask [B, P]."""
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    P = max(map(len, enc))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(enc), P), pad, dtype=torch.long)
    mask = torch.zeros(len(enc), P, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, P - len(e) :], mask[i, P - len(e) :] = torch.tensor(e), 1
    return ids.to(device), mask.to(device)


def mbpp_prompts(n: int) -> list[str]:
    """The 3-shot MBPP prompts of the first n test problems (evaluation's `original` format)."""
    from xdlm_tune.evaluation.tasks import load_mbpp

    return [p.prompt for p in load_mbpp(limit=n)]  # the shipped copy


def sft_prompts(n: int) -> list[str]:
    """The first n MBPP test problems in the SFT recipe's zero-shot training format (problem +
    tests, the code follows): what the MBPP-SFT checkpoint was trained to continue."""
    from xdlm_tune.data.sources import mbpp_records
    from xdlm_tune.evaluation.tasks import MBPP_SPLITS

    return [r["prompt"] for r in mbpp_records(None, task_ids=MBPP_SPLITS["test"])[:n]]


PROMPT_SETS = {"short": lambda n: SHORT_PROMPTS, "mbpp": mbpp_prompts, "sft": sft_prompts}


def cache_grid(args) -> str:
    from xdlm_tune.model import prepare_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    prep = prepare_model(args.model, kind=args.kind, dtype=dtype, trust_remote_code=args.kind == "diffusion")
    model, tok = prep.model.to(device).eval(), prep.tokenizer
    base = dict(
        steps=args.steps,
        gen_length=args.gen,
        block_length=args.block,
        sampler=args.sampler,
        k=args.k,
        temperature=0.0,
        mask_id=prep.mask_id,
        shift=prep.shift,
        return_stats=True,
    )
    generate(model, encode(tok, ["x"], device)[0], **{**base, "steps": 1, "gen_length": 2, "block_length": None})
    prompts = {name: PROMPT_SETS[name](max(args.batch)) for name in args.prompts}
    lines, summary = [], []
    for name in args.prompts:
        for batch in args.batch:
            ids, mask = encode(tok, (prompts[name] * batch)[:batch], device)
            head = f"### {name} prompt (<= {ids.shape[1]} tokens), batch {batch}"
            if batch * (ids.shape[1] + args.gen) > args.max_tokens:
                lines += [
                    head,
                    "",
                    f"skipped: a full pass is {batch * (ids.shape[1] + args.gen)} tokens > --max-tokens",
                    "",
                ]
                continue
            lines += [
                head,
                "",
                "| cache | threshold | time (s) | tokens/s | NFE | full passes | tokens processed | "
                "speed-up vs none | agreement with none | EOS share |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            variants = [(c, r) for c in args.caches for r in (["step"] if c == "none" else args.refresh)]
            for tau in args.thresholds:
                ref, t_ref = None, None
                for cache, refresh in variants:
                    (out, stats), t = timed(
                        lambda ids=ids, mask=mask, cache=cache, refresh=refresh, tau=tau: generate(
                            model, ids, attention_mask=mask, cache=cache, refresh=refresh, threshold=tau, **base
                        )
                    )
                    answer = out[:, ids.shape[1] :]
                    if cache == "none":
                        ref, t_ref = answer, t
                    agree = "-" if ref is None else f"{(answer == ref).float().mean().item():.3f}"
                    speed = "-" if t_ref is None else f"{t_ref / t:.2f}x"
                    label = cache if cache == "none" else f"{cache}, refresh={refresh}"
                    row = (
                        f"| {label} | {tau if tau is not None else 'off'} | {t:.1f} | {batch * args.gen / t:.1f} | "
                        f"{stats.nfe.float().mean().item():.1f} | {stats.full_passes} | "
                        f"{stats.tokens.float().mean().item():.0f} | {speed} | {agree} | "
                        f"{eos_share(answer, tok.eos_token_id)} |"
                    )
                    lines.append(row)
                    print(f"[{name} b{batch}] {row}", flush=True)
                    if name == "mbpp" and batch == 1 and tau is None and cache != "none":
                        summary.append((label, cache, t_ref / t))
            lines.append("")
    hw = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    head = (
        f"Model `{args.model}` ({type(model).__name__}, {dtype}, shift {prep.shift}); sampler {args.sampler} "
        f"(k {args.k}), temperature 0, gen {args.gen}, blocks of {args.block}, {args.steps} steps; device: {hw}, "
        f"{torch.get_num_threads()} thread(s); torch {torch.__version__}\n\n"
    )
    targets = "".join(
        f"- `{label}` on the MBPP prompt at batch 1: {r:.2f}x `none` (target {'3' if c == 'prefix' else '4'}x: "
        f"{'met' if r >= (3 if c == 'prefix' else 4) else 'NOT met'})\n"
        for label, c, r in summary
    )
    return head + "\n".join(lines) + ("\n" + targets if targets else "")


def batching(args) -> str:
    """Batched generate vs a per-sample loop, same sampler and budget (random-weight SmolLM2 shape)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    cfg.is_causal = False
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 49000, (int(n),), generator=g) for n in torch.randint(32, 65, (8,), generator=g)]
    batch, attn = torch.zeros(8, 64, dtype=torch.long), torch.zeros(8, 64, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, 64 - len(p) :], attn[i, 64 - len(p) :] = p, 1
    kw = dict(steps=32, gen_length=64, sampler="xdlm", temperature=0.0, k=0.1, mask_id=49151)
    _, t_batched = timed(lambda: generate(model, batch, attention_mask=attn, **kw))
    _, t_loop = timed(lambda: [generate(model, p[None], **kw) for p in prompts])
    return (
        f"xdlm, 32 steps, batch 8, prompt <= 64, gen 64; SmolLM2-135M-shaped Llama (random weights)\n\n"
        f"| method | time (s) | tokens/s |\n|---|---|---|\n| per-sample loop | {t_loop:.2f} | {512 / t_loop:.1f} |\n"
        f"| batched generate | {t_batched:.2f} | {512 / t_batched:.1f} |\n\nSpeed-up: {t_loop / t_batched:.2f}x\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--kind",
        choices=("causal", "diffusion"),
        default="causal",
        help="causal: convert a base (untrained denoiser); diffusion: an xdlm-tune export",
    )
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompts", nargs="+", choices=tuple(PROMPT_SETS), default=["short", "mbpp"])
    ap.add_argument("--caches", nargs="+", default=["none", "prefix", "dual"])
    ap.add_argument("--refresh", nargs="+", choices=("step", "block"), default=["step", "block"])
    ap.add_argument("--thresholds", type=lambda s: None if s == "off" else float(s), nargs="+", default=[None, 0.9])
    ap.add_argument("--sampler", default="xdlm")
    ap.add_argument("--k", type=float, default=0.1)
    ap.add_argument("--max-tokens", type=int, default=1 << 30, help="skip batches whose full pass is longer")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="", help="a line added to the saved results (e.g. the machine's load)")
    ap.add_argument("--batching", action="store_true", help="batched generate vs a per-sample loop instead")
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--out", default=None, help="results file name under benchmarks/results/ (with --save)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    report = batching(args) if args.batching else cache_grid(args)
    if args.note:
        report += f"\n{args.note}\n"
    print(report)
    if args.save:
        kind = "batching" if args.batching else "speed"
        name = args.out or f"sampling_{kind}_{'cuda' if torch.cuda.is_available() else 'cpu'}.md"
        path = ROOT / "benchmarks" / "results" / name
        cmd = "python benchmarks/sampling_speed.py " + " ".join(sys.argv[1:])
        path.write_text(f"# benchmarks/sampling_speed.py\n\n`{cmd}`\n\n" + report)
        print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
