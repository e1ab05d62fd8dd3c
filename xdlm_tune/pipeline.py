"""`xdlm-tune run RECIPE`: train -> evaluate (AR baseline + trained model) -> export -> sample the export.

Each stage writes under ``training.output_dir``:

    checkpoint-*/          the training run (xdlm-tune train)
    eval/<task>/           samples.jsonl, summary.md, pass_at_1.png (xdlm-tune eval)
    export/                merged Hub folder with modeling_xdlm.py and a model card (xdlm-tune export)
    export_sample.txt      what the export wrote with plain transformers, in a separate process
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .config import Recipe, load_recipe

BENCHMARK_FILES = {"mbpp": "mbpp.jsonl", "humaneval": "HumanEval.jsonl.gz"}

# Runs in a fresh interpreter that imports only torch and transformers: the export must stand alone.
_SAMPLE_SCRIPT = r"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompt, steps, new = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
enc = tok([prompt], return_tensors="pt")
out = model.diffusion_generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=new,
                               steps=steps, temperature=0.0, eos_token_id=tok.eos_token_id)
print(tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
"""


def _say(msg: str) -> None:
    print(f"[xdlm-tune run] {msg}", flush=True)


def evaluate_run(recipe: Recipe, run_dir: Path) -> dict[str, dict]:
    """Evaluate the run's newest checkpoint (and the AR baseline) on every task of ``recipe.eval``."""
    import torch

    from .evaluation import load_benchmark
    from .evaluation.harness import GenerationConfig, run_evaluation, settings_from_recipe, summarize_run
    from .evaluation.run import ar_baseline_model, checkpoint_model

    ev, m = recipe.eval, recipe.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = []
    if ev.ar_baseline and m.kind == "causal":
        models.append(ar_baseline_model(m.name_or_path, device, label="base (AR)", dtype=m.dtype,
                                        attn_implementation=m.attn_implementation or "sdpa", gguf_file=m.gguf_file))
    models.append(checkpoint_model(run_dir, device, label=f"xdlm k={recipe.diffusion.k}"))
    settings = settings_from_recipe(recipe).check()
    cfg = GenerationConfig(sampling=settings, batch_size=ev.batch_size, seed=recipe.training.seed)
    results = {}
    for task in ev.tasks:
        data = Path(ev.data_dir) / BENCHMARK_FILES[task] if ev.data_dir else None
        problems = load_benchmark(task, data, limit=ev.limit,
                                  prompt_format=ev.prompt_format if task == "mbpp" else "original")
        out = run_dir / "eval" / task
        _say(f"evaluating {task}: {len(problems)} problems, steps {ev.steps}, sampler {settings.resolved_sampler} -> {out}")
        run_evaluation(models, problems, steps=ev.steps, cfg=cfg, out_dir=out)
        results[task] = summarize_run(out, title=f"{task} pass@1 ({len(problems)} problems)")
        print(results[task]["table"], flush=True)
    return results


def sample_export(export_dir: Path, prompt: str, *, steps: int = 16, new_tokens: int = 32) -> str:
    """Generate from the export in a separate Python process with plain transformers."""
    proc = subprocess.run([sys.executable, "-c", _SAMPLE_SCRIPT, str(Path(export_dir).resolve()), prompt, str(steps), str(new_tokens)],
                          capture_output=True, text=True, timeout=900, cwd="/")
    if proc.returncode:
        raise RuntimeError(f"sampling the export failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip()


def run_main(argv: list[str] | None = None) -> int:
    """`xdlm-tune run RECIPE [overrides]` (the CLI's registry calls this with the arguments after `run`)."""
    import argparse

    from .checkpoint import CheckpointError
    from .config import RecipeError

    ap = argparse.ArgumentParser(prog="xdlm-tune run", description="train -> eval -> export -> sample the export")
    ap.add_argument("recipe", help="a YAML recipe, e.g. recipes/smollm2-135m-xdlm-lora.yaml (or a shipped recipe's name)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_args(argv)
    try:
        run_pipeline(args.recipe, args.overrides)
    except (RecipeError, CheckpointError) as e:
        print(f"xdlm-tune run: {e}", file=sys.stderr)
        return 2
    return 0


def run_pipeline(recipe_path: str, overrides: list[str] = ()) -> dict:
    from .export.run import export_run
    from .train.loop import train

    recipe = load_recipe(recipe_path, list(overrides))
    run_dir = Path(recipe.training.output_dir)
    t0 = time.time()
    _say(f"1/4 training {recipe.model.name_or_path} with k={recipe.diffusion.k} for {recipe.training.max_steps} steps -> {run_dir}")
    train(recipe)
    _say("2/4 evaluating")
    results = evaluate_run(recipe, run_dir)
    first = next(iter(results.values()), None)
    _say("3/4 exporting")
    export_dir = export_run(run_dir, recipe.export.out_dir or run_dir / "export",
                            push_to_hub_repo=recipe.export.push_to_hub,
                            eval_summary=first["table"] if first else None,
                            plot_path=first["plot"] if first else None)
    _say("4/4 sampling the export with plain transformers (a separate process)")
    prompt = "def fibonacci(n):\n"
    sample = sample_export(Path(export_dir), prompt)
    (run_dir / "export_sample.txt").write_text(prompt + sample + "\n")
    print(prompt + sample, flush=True)
    _say(f"done in {time.time() - t0:.0f} s. Where everything went:")
    print(f"  recipe + checkpoints: {run_dir}/ (metrics.jsonl, TensorBoard events, checkpoint-*)")
    for task in results:
        print(f"  {task} evaluation:     {run_dir}/eval/{task}/ (summary.md, pass_at_1.png, samples.jsonl)")
    print(f"  export:               {export_dir}/ (load with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True))")
    print(f"  export sample:        {run_dir}/export_sample.txt")
    return {"run_dir": run_dir, "export_dir": export_dir, "eval": results, "sample": sample}
