"""`xdlm-tune run`: train -> eval -> export -> sample the export, end to end on a tiny local model."""

from __future__ import annotations

import json

import pytest
from tiny_models import save_tiny_model

from xdlm_tune.workflows.pipeline import run_pipeline


@pytest.mark.slow
def test_run_pipeline_end_to_end(benchmark_data, tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    run_dir = tmp_path / "run"
    res = run_pipeline(
        "recipes/smollm2-135m-xdlm-lora.yaml",
        [
            f"model.name_or_path={model_dir}",
            f"training.output_dir={run_dir}",
            "training.max_steps=2",
            "training.eval_every=1",
            "training.save_every=2",
            "training.eval_batches=1",
            "data.seq_len=32",
            "data.max_records=8",
            "data.eval_holdout=2",
            "eval.tasks=[mbpp, genppl]",
            "eval.genppl_samples=2",
            "eval.genppl_prefix_tokens=4",
            "eval.limit=2",
            "eval.steps=[2]",
            "eval.gen_length=4",
            "eval.block_length=4",
            "eval.batch_size=2",
            f"eval.data_dir={benchmark_data}",
            "diffusion.schedule=cosine",
        ],
    )
    # Train: checkpoints and a held-out ELBO at steps 0, 1, 2.
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(m["step"] for m in metrics if "eval/nelbo" in m) == [0, 1, 2]
    # Eval: the AR baseline row and the trained model's row, 2 problems each.
    rows = [json.loads(l) for l in (run_dir / "eval" / "mbpp" / "samples.jsonl").read_text().splitlines()]
    assert sorted((r["label"], r["steps"]) for r in rows) == sorted([("base (AR)", None)] * 2 + [("xdlm k=0.1", 2)] * 2)
    assert (run_dir / "eval" / "mbpp" / "pass_at_1.png").is_file()
    # genppl: the judge's own two rows, then the untrained conversion and the trained model per budget.
    gen = json.loads((run_dir / "eval" / "genppl" / "genppl.json").read_text())
    assert [(r["label"], r["steps"], r["n"]) for r in gen] == [
        ("tiny (AR judge) AR greedy", None, 2),
        ("tiny (AR judge) AR sampled", None, 2),
        ("untrained", 2, 2),
        ("xdlm k=0.1 (trained)", 2, 2),
    ]
    assert all(r["syntax_valid"] is not None for r in gen)  # python-stdlib is code: the compile rate is there
    # The run's schedule reaches the sampler (evaluation) and the export's config (diffusion_generate).
    used = {json.dumps(r["sampler"], sort_keys=True) for r in rows if r["steps"] is not None}
    assert [json.loads(u)["schedule"] for u in used] == ["cosine"] and json.loads(used.pop())["sampler"] == "xdlm"
    assert json.loads((res["export_dir"] / "config.json").read_text())["xdlm"]["sampler"]["schedule"] == "cosine"
    # Export: self-contained folder whose card carries the evaluation table; sampled in a subprocess.
    export = res["export_dir"]
    assert (export / "modeling_xdlm.py").is_file()
    card = (export / "README.md").read_text()
    assert "| xdlm k=0.1 | 2 | 2 |" in card
    assert "| pass@1 (95% CI) | syntax valid (95% CI) |" in card  # the card inherits the summary's intervals
    assert (run_dir / "export_sample.txt").read_text().startswith("def fibonacci(n):")
