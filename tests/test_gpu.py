"""GPU-only checks (skipped without CUDA; run by benchmarks/gpu_check.sh): bf16 training steps on
one GPU, DeepSpeed ZeRO-2/3 with NCCL in one process, and the compiled Triton loss at a shape
with many tiles. Never run in this project's CPU CI: their first real run is gpu_check.sh."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from test_train import REPO, make_tiny, run

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny-gpu"))


STEPS = (
    "training.max_steps=3",
    "training.eval_every=0",
    "training.save_every=3",
    "training.warmup_steps=1",
    "training.lr=1e-3",
)


def test_bf16_training_steps_on_one_gpu(tiny, tmp_path):
    res = run(tiny, tmp_path / "bf16", *STEPS, "training.mixed_precision=bf16")
    assert sorted(res.losses) == [1, 2, 3] and all(math.isfinite(v) for v in res.losses.values())
    assert (tmp_path / "bf16" / "checkpoint-00000003").is_dir()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_with_nccl_in_one_process(tiny, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdlm_tune.train",
            str(tiny),
            f"training.output_dir={out}",
            *STEPS,
            "training.mixed_precision=bf16",
            f"deepspeed.config=deepspeed_configs/zero{stage}.json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (out / "checkpoint-00000003" / "deepspeed").is_dir()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_compiled_triton_loss_matches_the_torch_path_on_many_tiles(dtype):
    from xdlm_tune.diffusion import fused_xdlm_loss

    g = torch.Generator(device="cuda").manual_seed(0)
    N, H, V, mask_id = 300, 96, 3000, 2999  # partial tiles in every direction
    hidden = (torch.randn(2, N // 2, H, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device="cuda", generator=g) * H**-0.5).to(dtype).requires_grad_()
    x0 = torch.randint(0, mask_id, (2, N // 2), device="cuda", generator=g)
    z = torch.where(torch.rand(2, N // 2, device="cuda", generator=g) < 0.5, torch.full_like(x0, mask_id), x0)
    alpha = torch.tensor([0.3, 0.8], device="cuda")
    out = {}
    for be in ("torch", "triton"):
        h = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.1, mask_id=mask_id, logit_softcap=30.0, backend=be)
        out[be] = (h, *torch.autograd.grad(h.sum(), [hidden, weight]))
    for a, b in zip(out["triton"], out["torch"]):
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        assert err < (2e-2 if dtype == torch.bfloat16 else 1e-4), err
