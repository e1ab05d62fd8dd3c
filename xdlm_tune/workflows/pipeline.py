"""`xdlm-tune run RECIPE`: train -> evaluate (AR baseline + trained model) -> export -> sample the export.

Each stage writes under ``training.output_dir``:

    checkpoint-*/          the training run (xdlm-tune train)
    eval/<task>/           samples.jsonl, summary.md, pass_at_1.png (xdlm-tune eval)
    export/                merged Hub folder with modeling_xdlm.py and a model card (xdlm-tune export)
    export_sample.txt      what the export wrote with plain transformers, in a separate process
    reuse.json             the key each stage was made with (xdlm_tune/workflows/reuse.py)

Run again, a stage whose inputs (checkpoint, recipe, code version) did not change is reused, and
the run says so: a finished training run (training.resume set and the newest checkpoint at
training.max_steps) is not reloaded, an evaluation, an export and its sample are not redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..config import Recipe, load_recipe
from .reuse import Stamps, changed, checkpoint_id, stage_key

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
                               block_length=new, steps=steps, temperature=0.0, eos_token_id=tok.eos_token_id)
print(tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
"""


def _say(msg: str) -> None:
    from ..console import write

    write(f"[xdlm-tune run] {msg}")


def _problems_digest(problems) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(f"{p.task_id}\0{p.prompt}\0{p.test_code}\0".encode())
    return h.hexdigest()[:16]


def _set_aside_stale_samples(out: Path, key: dict[str, str]) -> None:
    """Samples made with other settings must not be resumed from: move them to out/stale/."""
    key_file = out / "eval_key.json"
    old = sorted(out.glob("samples*.jsonl"))
    try:
        previous = json.loads(key_file.read_text())
    except (OSError, ValueError):
        previous = None
    if old and previous != key:
        stale = out / "stale"
        shutil.rmtree(stale, ignore_errors=True)
        stale.mkdir(parents=True)
        for f in old:
            f.rename(stale / f.name)
        _say(
            f"{out} was evaluated with other inputs (changed: {', '.join(changed(previous, key))}): "
            f"its samples moved to {stale}/"
        )
    out.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=1) + "\n")


def evaluate_run(recipe: Recipe, run_dir: Path, *, stamps: Stamps | None = None) -> dict[str, dict]:
    """Evaluate the run's newest checkpoint (and the AR baseline) on every task of ``recipe.eval``;
    a task already evaluated with the same checkpoint, settings and code is reused (``stamps``)."""
    import torch

    from ..checkpoints.load import find_checkpoint
    from ..evaluation import load_benchmark
    from ..evaluation.harness import GenerationConfig, run_evaluation
    from ..evaluation.load import ar_baseline_model, checkpoint_model
    from ..evaluation.summary import summarize_run

    ev, m = recipe.eval, recipe.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = find_checkpoint(run_dir)  # the newest checkpoint of the run
    models = []
    settings = recipe.sampler_settings().check()
    cfg = GenerationConfig(sampling=settings, batch_size=ev.batch_size, seed=recipe.training.seed)
    results = {}
    for task in ev.tasks:
        if task == "genppl":
            results[task] = _genppl_task(recipe, run_dir, ckpt, device, stamps)
            continue
        # null: the shipped copy; "hub": the Hub's current revision; else a folder of benchmark files
        data = ev.data_dir if ev.data_dir in (None, "hub") else Path(ev.data_dir) / BENCHMARK_FILES[task]
        problems = load_benchmark(
            task, data, limit=ev.limit, prompt_format=ev.prompt_format if task == "mbpp" else "original"
        )
        out = run_dir / "eval" / task
        key = stage_key(
            stage="eval",
            task=task,
            checkpoint=checkpoint_id(ckpt),
            model=dataclasses.asdict(m),
            adaptation=dataclasses.asdict(recipe.adaptation),
            eval=dataclasses.asdict(ev),
            generation=dataclasses.asdict(cfg),
            problems=_problems_digest(problems),
        )
        title = f"{task} pass@1 ({len(problems)} problems)"
        if stamps is not None and stamps.fresh(f"eval/{task}", key):
            _say(f"reused: the {task} evaluation in {out}/ (same checkpoint {ckpt.name}, recipe and code)")
            results[task] = summarize_run(out, title=title)
            print(results[task]["table"], flush=True)
            continue
        if not models:  # loaded only when some task needs them
            if ev.ar_baseline and m.kind == "causal":
                models.append(
                    ar_baseline_model(
                        m.name_or_path,
                        device,
                        label="base (AR)",
                        dtype=m.dtype,
                        attn_implementation=m.attn_implementation or "sdpa",
                        gguf_file=m.gguf_file,
                    )
                )
            models.append(checkpoint_model(ckpt, device, label=f"xdlm k={recipe.diffusion.k}"))
        _set_aside_stale_samples(out, key)
        _say(
            f"evaluating {task}: {len(problems)} problems, steps {ev.steps}, sampler {settings.resolved_sampler} -> {out}"
        )
        run_evaluation(models, problems, steps=ev.steps, cfg=cfg, out_dir=out)
        results[task] = summarize_run(out, title=title)
        print(results[task]["table"], flush=True)
        if stamps is not None:
            stamps.record(f"eval/{task}", key, [*results[task]["files"], out / "summary.md", results[task]["plot"]])
    return results


def _genppl_task(recipe: Recipe, run_dir: Path, ckpt: Path, device, stamps: Stamps | None) -> dict:
    """eval.tasks `genppl`: the untrained conversion next to the trained checkpoint (evaluation/genppl/task.py)."""
    from ..evaluation.genppl.metrics import genppl_settings, markdown_table
    from ..evaluation.genppl.task import run_genppl_task

    ev = recipe.eval
    out = run_dir / "eval" / "genppl"
    key = stage_key(
        stage="eval",
        task="genppl",
        checkpoint=checkpoint_id(ckpt),
        model=dataclasses.asdict(recipe.model),
        adaptation=dataclasses.asdict(recipe.adaptation),
        data=dataclasses.asdict(recipe.data),
        eval=dataclasses.asdict(ev),
        sampling=dataclasses.asdict(genppl_settings(recipe.sampler_settings())),
        seed=recipe.training.seed,
    )
    if stamps is not None and stamps.fresh("eval/genppl", key):
        _say(f"reused: the genppl evaluation in {out}/ (same checkpoint {ckpt.name}, recipe and code)")
        from ..evaluation.genppl.metrics import GenRow

        rows = [GenRow(**r) for r in json.loads((out / "genppl.json").read_text())]
        table = markdown_table(rows)
        print(table, flush=True)
        return {
            "table": table,
            "files": [out / "samples_genppl.jsonl", out / "genppl.json"],
            "plot": out / "genppl.png",
        }
    _say(
        f"evaluating genppl: the untrained conversion vs the trained model, {ev.genppl_samples} held-out prefixes, "
        f"{ev.gen_length} tokens, steps {ev.steps}, sampler ancestral (temperature 1) -> {out}"
    )
    result = run_genppl_task(recipe, ckpt, device, out)
    print(result["table"], flush=True)
    if stamps is not None:
        stamps.record("eval/genppl", key, [*result["files"], out / "genppl.md", result["plot"]])
    return {"table": result["table"], "files": result["files"], "plot": result["plot"]}


def sample_export(export_dir: Path, prompt: str, *, steps: int = 16, new_tokens: int = 32) -> str:
    """Generate from the export in a separate Python process with plain transformers."""
    proc = subprocess.run(
        [sys.executable, "-c", _SAMPLE_SCRIPT, str(Path(export_dir).resolve()), prompt, str(steps), str(new_tokens)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd="/",
    )
    if proc.returncode:
        raise RuntimeError(f"sampling the export failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip()


def _why(stage: str, key: dict[str, str], stamps: Stamps) -> str:
    diff = stamps.changed(stage, key)
    return f" (not reused: changed {', '.join(diff)})" if diff else ""


def _finished_checkpoint(recipe: Recipe, run_dir: Path) -> Path | None:
    """The newest checkpoint when training.resume is set and it is already at training.max_steps
    (checked compatible with the recipe): nothing is left to train."""
    from ..checkpoints.protocol import resolve_resume
    from ..train.state import check_resume_compatible, read_state

    ckpt = resolve_resume(run_dir, recipe.training.resume)
    if ckpt is None or read_state(ckpt, restore_rng=False).step < recipe.training.max_steps:
        return None
    check_resume_compatible(ckpt, recipe)
    return ckpt


def run_main(argv: list[str] | None = None) -> int:
    """`xdlm-tune run RECIPE [overrides]` (the CLI's registry calls this with the arguments after `run`)."""
    import argparse

    from ..console import HelpFormatter, setup_logging

    ap = argparse.ArgumentParser(
        prog="xdlm-tune run",
        formatter_class=HelpFormatter,
        description="The whole pipeline for one recipe: train (training.resume=true continues an earlier run), "
        "evaluate the AR baseline and the trained model on the recipe's eval section, export a merged "
        "Hub folder, and sample that export with plain transformers in a separate process. Steps whose "
        "inputs did not change since the last run (same recipe and code) are reused.",
        epilog="example:\n  xdlm-tune run recipes/smollm2-135m-xdlm-lora.yaml training.max_steps=50 eval.limit=10 "
        "'eval.steps=[16,32]'",
    )
    ap.add_argument(
        "recipe",
        help="a YAML recipe (see recipes/ or `xdlm-tune recipes`), e.g. "
        "recipes/smollm2-135m-xdlm-lora.yaml, or a shipped recipe's name",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="change any recipe field: section.key=value, the value read as YAML (numbers, true/false, "
        "null, lists like [q_proj, v_proj]), e.g. diffusion.k=0.5 training.output_dir=runs/try",
    )
    args = ap.parse_args(argv)
    setup_logging()
    run_pipeline(args.recipe, args.overrides)  # expected failures: one paragraph (xdlm_tune.errors)
    return 0


def run_pipeline(recipe_path: str, overrides: list[str] = ()) -> dict:
    recipe = load_recipe(recipe_path, list(overrides))  # a bad recipe fails before anything heavy loads
    from ..checkpoints.load import find_checkpoint
    from ..export.entry import export_run
    from ..export.hub import push_to_hub
    from ..train.loop import train

    run_dir = Path(recipe.training.output_dir)
    stamps = Stamps(run_dir)
    t0 = time.time()
    finished = _finished_checkpoint(recipe, run_dir)
    if finished is not None:
        _say(
            f"1/4 training: reused {finished} (already at training.max_steps={recipe.training.max_steps}, same recipe)"
        )
    else:
        _say(
            f"1/4 training {recipe.model.name_or_path} with k={recipe.diffusion.k} for {recipe.training.max_steps} steps -> {run_dir}"
        )
        train(recipe)
    _say("2/4 evaluating")
    results = evaluate_run(recipe, run_dir, stamps=stamps)
    first = next(iter(results.values()), None)

    ckpt = find_checkpoint(run_dir)
    export_dir = Path(recipe.export.out_dir or run_dir / "export")
    export_key = stage_key(
        stage="export",
        checkpoint=checkpoint_id(ckpt),
        recipe=recipe.to_dict(),
        out=str(export_dir.resolve()),
        table=first["table"] if first else None,
        plot=first is not None,
    )
    if stamps.fresh("export", export_key):
        _say(f"3/4 exporting: reused {export_dir}/ (same checkpoint {ckpt.name}, recipe, evaluation and code)")
        if recipe.export.push_to_hub:
            push_to_hub(export_dir, recipe.export.push_to_hub)
    else:
        _say("3/4 exporting" + _why("export", export_key, stamps))
        stamps.forget("export")  # the folder is about to be replaced
        export_dir = export_run(
            run_dir,
            export_dir,
            push_to_hub_repo=recipe.export.push_to_hub,
            eval_summary=first["table"] if first else None,
            plot_path=first["plot"] if first else None,
        )
        stamps.record("export", export_key, [export_dir / "config.json", export_dir / "README.md"])

    prompt, steps, new_tokens = "def fibonacci(n):\n", 16, 32
    sample_file = run_dir / "export_sample.txt"
    sample_key = stage_key(stage="sample", export=export_key, prompt=prompt, steps=steps, new_tokens=new_tokens)
    if stamps.fresh("sample", sample_key):
        _say(f"4/4 sampling the export: reused {sample_file} (same export)")
        sample = sample_file.read_text().removeprefix(prompt).rstrip("\n")
    else:
        _say(
            "4/4 sampling the export with plain transformers (a separate process)" + _why("sample", sample_key, stamps)
        )
        sample = sample_export(export_dir, prompt, steps=steps, new_tokens=new_tokens)
        sample_file.write_text(prompt + sample + "\n")
        stamps.record("sample", sample_key, [sample_file])
    print(prompt + sample, flush=True)
    _say(f"done in {time.time() - t0:.0f} s. Where everything went:")
    print(f"  recipe + checkpoints: {run_dir}/ (metrics.jsonl, TensorBoard events, checkpoint-*)")
    for task, res in results.items():
        summary = "genppl.md" if task == "genppl" else "summary.md"
        files = ", ".join(sorted({summary, Path(res["plot"]).name, *(Path(f).name for f in res["files"])}))
        print(f"  {task} evaluation:     {run_dir}/eval/{task}/ ({files})")
    print(
        f"  export:               {export_dir}/ (load with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True))"
    )
    print(f"  export sample:        {sample_file}")
    return {"run_dir": run_dir, "export_dir": export_dir, "eval": results, "sample": sample}
