"""`xdlm-tune eval --benchmark genppl`: gen-PPL, entropy and compile rate over step budgets.

    xdlm-tune eval --benchmark genppl --checkpoint runs/x --steps 4 8 16 32 --num-samples 32 --gen-length 64
    xdlm-tune eval --benchmark genppl --model smollm2-135m --prefix-tokens 32 --recipe recipes/smollm2-135m-xdlm-lora.yaml

The model is chosen as for the other benchmarks (--model base or export, or --checkpoint). The
judge (--judge) defaults to the base model before conversion: the checkpoint's recipe
model.name_or_path, or --model itself when it is a causal base. --prefix-tokens N > 0 continues
held-out prefixes of the recipe's data (--recipe, default the checkpoint's recipe; SFT data
continues its held-out prompts); 0 (the default) samples unconditionally after one EOS.
Writes genppl.json, genppl.md, genppl.png and samples_genppl.jsonl under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from ...config.sampler import SamplerSettings
from ...config.sampler_args import add_sampler_arguments, settings_from_args
from ..harness import EvalModel, GenerationConfig
from .metrics import (
    GenRow,
    diffusion_samples,
    genppl_settings,
    heldout_prefixes,
    reference_rows,
    save_samples,
    score,
    start_token,
    write_outputs,
)

CODE_SOURCES = ("python-stdlib", "mbpp-train")


def build_parser() -> argparse.ArgumentParser:
    from ...console import Parser
    from ..load import add_model_arguments

    ap = Parser(
        prog="xdlm-tune eval --benchmark genppl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--benchmark", choices=["genppl"], default="genppl")
    add_model_arguments(ap)
    ap.add_argument("--judge", help="the AR judge: a causal LM name, Hub id or folder (default: the base model)")
    ap.add_argument("--recipe", help="recipe whose held-out data gives the prefixes (default: the checkpoint's)")
    ap.add_argument(
        "--prefix-tokens", type=int, default=0, help="0: unconditional; N: continue N-token held-out prefixes"
    )
    ap.add_argument("--num-samples", type=int, default=16)
    add_sampler_arguments(
        ap,
        base_help="how gen-PPL is measured: the model's own length, budget and k, sampler ancestral, temperature 1, "
        "one block (genppl.genppl_settings)",
    )
    ap.add_argument(
        "--code",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="report the compile rate (default: on for the builtin code corpora)",
    )
    ap.add_argument("--no-reference", action="store_true", help="skip the AR judge's own samples")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default=None, help="row label for the diffusion model")
    ap.add_argument("--out", default="runs/genppl", help="output directory")
    return ap


def _fail(msg: str) -> None:
    raise SystemExit(f"xdlm-tune eval --benchmark genppl: {msg}")


def check_args(args) -> None:
    if args.num_samples < 1:
        _fail(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.prefix_tokens < 0:
        _fail(f"--prefix-tokens must be >= 0, got {args.prefix_tokens}")


def cli_settings(args, em: EvalModel) -> tuple[SamplerSettings, list[int]]:
    """The gen-PPL protocol on the model's own settings, with the sampler flags given; a bad combination fails."""
    return settings_from_args(args, genppl_settings(em.settings), fail=_fail)


def generation_metrics(
    em: EvalModel,
    judge: EvalModel,
    prefixes: Sequence[list[int]],
    *,
    steps: Sequence[int],
    cfg: GenerationConfig,
    code: bool,
    samples_file: Path | None = None,
    reference: bool = True,
    compile_prefix: bool = True,
) -> list[GenRow]:
    """Rows for ``em`` at every budget in ``steps`` (and the judge's reference rows first).
    ``compile_prefix``: the compile check includes the prefix (code prefixes) or not (SFT prompts)."""
    rows = []
    if reference:
        rows += reference_rows(
            judge,
            em.tokenizer,
            prefixes,
            gen_length=cfg.sampling.gen_length,
            code=code,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            compile_prefix=compile_prefix,
        )
    from ..harness import _settings_record

    for s in steps:
        samples = diffusion_samples(em, prefixes, s, cfg)
        details: list[dict] = []
        rows.append(
            score(
                samples,
                em.tokenizer,
                judge,
                label=em.label,
                steps=s,
                code=code,
                batch_size=cfg.batch_size,
                compile_prefix=compile_prefix,
                details=details,
            )
        )
        if samples_file is not None:
            used = {**_settings_record(cfg.sampling.replace(steps=s)), "seed": cfg.seed}
            save_samples(samples_file, em.label, s, samples, em.tokenizer, details, used)
    return rows


def is_sft(recipe) -> bool:
    """SFT data: the prefixes are prompts (prose), so the compile check reads the answer alone."""
    return recipe is not None and recipe.data.mode == "sft"


def make_prefixes(tokenizer, *, recipe, n: int, prefix_tokens: int) -> list[list[int]]:
    """``n`` unconditional starts ([EOS]) or held-out prefixes of ``recipe``'s data."""
    if prefix_tokens == 0 and (recipe is None or recipe.data.mode != "sft"):
        return [[start_token(tokenizer)] for _ in range(n)]
    if recipe is None:
        _fail("--prefix-tokens needs a recipe for its held-out data: give --recipe or --checkpoint")
    return heldout_prefixes(recipe.data, tokenizer, n=n, prefix_tokens=prefix_tokens)


def genppl_main(argv: list[str] | None = None) -> int:
    from ...config import load_recipe
    from ..load import _default_dtype, _xdlm_block, ar_baseline_model, load_diffusion_model

    args = build_parser().parse_args(argv)
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    em = load_diffusion_model(args, device)
    recipe = None
    if args.recipe:
        recipe = load_recipe(args.recipe, [])
    elif args.checkpoint:
        from ...checkpoints.load import _recipe, find_checkpoint

        recipe = _recipe(find_checkpoint(args.checkpoint))
    judge_name = args.judge
    if judge_name is None:
        if args.checkpoint:
            judge_name = recipe.model.name_or_path if recipe.model.kind == "causal" else None
        elif _xdlm_block(args.model) is None and (args.kind or "causal") == "causal":
            judge_name = args.model
        if judge_name is None:
            _fail("cannot tell the base model for the AR judge here (an export or a diffusion base): pass --judge")
    judge = ar_baseline_model(
        judge_name,
        device,
        label=Path(judge_name).name,
        dtype=_default_dtype(args, device),
        attn_implementation=args.attn_implementation,
        trust_remote_code=args.trust_remote_code,
    )
    code = args.code if args.code is not None else bool(recipe and recipe.data.source in CODE_SOURCES)
    prefixes = make_prefixes(em.tokenizer, recipe=recipe, n=args.num_samples, prefix_tokens=args.prefix_tokens)
    settings, budgets = cli_settings(args, em)
    cfg = GenerationConfig(sampling=settings, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_file = out / "samples_genppl.jsonl"
    samples_file.write_text("")
    start = [start_token(em.tokenizer)]
    mode = "unconditional" if all(p == start for p in prefixes) else "held-out prefixes"
    print(
        f"[genppl] {em.label}: {len(prefixes)} samples ({mode}), {settings.gen_length} tokens, steps {budgets}, "
        f"sampler {settings.resolved_sampler}, judge {judge.label} -> {out}"
    )
    rows = generation_metrics(
        em,
        judge,
        prefixes,
        steps=budgets,
        cfg=cfg,
        code=code,
        samples_file=samples_file,
        reference=not args.no_reference,
        compile_prefix=not is_sft(recipe),
    )
    title = f"gen-PPL under {judge.label} ({len(prefixes)} samples, {mode}, {settings.gen_length} tokens)"
    paths = write_outputs(rows, out, title)
    print("\n" + paths["md"].read_text())
    print(f"[genppl] table: {paths['md']}; json: {paths['json']}; plot: {paths['png']}; samples: {samples_file}")
    return 0
