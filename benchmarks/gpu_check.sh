#!/usr/bin/env bash
# One prepared GPU check (at most 9.5 minutes of step limits on one H200): GPU-marked tests, the fused-loss benchmark
# (materialised vs torch chunked vs Triton at V=128256, H=4096), the sampling benchmark, and LoRA
# throughput / peak memory of an 8B-shaped model (2 and 4 layers, extrapolated to 32 and labelled
# so), and xdlm-tune plan's estimate against torch.cuda.max_memory_allocated of real training steps
# (the Llama-3-8B recipe's config cut to 2 layers, random weights). Writes benchmarks/results/gpu_check_<device>_gpu.md (and loss_memory_gpu.md).
#
#   bash benchmarks/gpu_check.sh [--quick] [--python PATH]
#
# Every step runs under its own time limit; a failed or timed-out step is recorded in the report
# and the next one runs. Without CUDA it stops at once.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --python) shift; PY=${1:?--python needs a path} ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --quick, --python PATH)" >&2; exit 2 ;;
  esac
  shift
done
source benchmarks/gpu_steps.sh  # find_python, step, write_status
find_python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False): nothing measured." >&2
  echo "Run it on a machine with an NVIDIA GPU and a CUDA build of torch." >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d -t xdlm-gpu-check.XXXXXX)
"$PY" -c "import torch; print(torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" > "$WORK/device.txt"
echo "gpu_check.sh on $(cat "$WORK/device.txt"); work folder $WORK"
if [ $QUICK = 1 ]; then
  SETTING=32000x1024x1024; LAYERS="1 2"; SEQ=512; GEN=32
else
  SETTING=128256x4096x4096; LAYERS="2 4"; SEQ=2048; GEN=64
fi

# 1. GPU-marked tests and the Triton kernel compiled on CUDA (the same tests as under the interpreter).
step "gpu tests" 120 bash -c "'$PY' -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_model_bidirectional.py \
  tests/test_fused_loss_triton.py 2>&1 | tail -30 | tee '$WORK/pytest.txt'; exit \${PIPESTATUS[0]}"
# 2. Fused loss: materialised reference vs chunked torch vs Triton, bf16, frozen and trainable head.
step "loss benchmark" 130 "$PY" benchmarks/loss_memory.py --settings $SETTING --methods torch triton --dtypes bf16 --reps 3 \
  --out "$WORK/loss_memory.md"
[ -f "$WORK/loss_memory.md" ] && cp "$WORK/loss_memory.md" benchmarks/results/loss_memory_gpu.md
# 3. Sampling speed (the sampler has no KV-cache option in this version: one configuration).
step "sampling benchmark" 50 bash -c "'$PY' benchmarks/sampling_speed.py --gen $GEN 2>&1 | tail -20 > '$WORK/sampling.md'; exit \${PIPESTATUS[0]}"
# 4. LoRA on an 8B-shaped model: Llama-3-8B dimensions, 2 and 4 layers, extrapolated to 32.
step "lora 8B-shaped" 140 "$PY" benchmarks/gpu_check.py lora --shape llama3-8b --layers $LAYERS --seq $SEQ \
  --json "$WORK/lora.json"
# 5. The memory plan against torch.cuda.max_memory_allocated: Llama-3-8B's config with 2 layers, LoRA, no DeepSpeed.
step "memory plan" 120 "$PY" benchmarks/gpu_check.py plan --recipe llama3-8b-xdlm-lora-zero3 --layers 2 \
  --json "$WORK/plan.json" deepspeed.config=null

write_status "$WORK/status.json"
"$PY" benchmarks/gpu_check.py report --workdir "$WORK"
for n in "${ORDER[@]}"; do echo "  $n: ${STATUS[$n]}"; done
