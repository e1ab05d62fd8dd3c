#!/usr/bin/env bash
# One prepared GPU result (370 s of step limits on one H100/H200): trains the MBPP-SFT
# recipe on the embedded SmolLM2-135M at k = 0.1 and k = 0 with the same budget (bf16, the fused
# loss with its Triton kernel), evaluates both and the AR baseline on MBPP test problems at 16 and 32
# steps (xdlm / confidence, the recipe's prompt format, dual KV cache), compares k = 0.1 with k = 0
# (`xdlm-tune compare`, where this version has it) and writes report.md, pass_at_1.png, the eval
# summaries and samples under the output folder. Nothing is downloaded.
#
#   bash benchmarks/gpu_result.sh [--rehearse] [--out DIR] [--work DIR] [--python PATH] [--wheels DIR]...
#                                 [--train-steps N] [--batch N] [--problems N]
#
# --rehearse: the same steps at tiny sizes on a CPU (what tests/test_gpu_result.py runs). --wheels:
# install the carried wheels in DIR (parts NAME.whl.part-* are joined) offline first. Every step
# runs under its own time limit; a failed or timed-out step is recorded and the next one runs;
# whatever finished is kept; the exit status is 1 if any step failed or timed out. Without CUDA (and
# without --rehearse) it stops at once with status 2.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
REHEARSE=0
RES=""
WORK=""
WHEELS=()
TRAIN_STEPS=""; BATCH=""; PROBLEMS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) REHEARSE=1 ;;
    --out) shift; RES=${1:?--out needs a folder} ;;
    --work) shift; WORK=${1:?--work needs a folder} ;;
    --python) shift; PY=${1:?--python needs a path} ;;
    --wheels) shift; WHEELS+=("${1:?--wheels needs a folder}") ;;
    --train-steps) shift; TRAIN_STEPS=${1:?--train-steps needs a number} ;;
    --batch) shift; BATCH=${1:?--batch needs a number} ;;
    --problems) shift; PROBLEMS=${1:?--problems needs a number} ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_result.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in "$TRAIN_STEPS" "$BATCH" "$PROBLEMS"; do
  if [ -n "$v" ] && ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu_result.sh: --train-steps, --batch and --problems take positive integers, got '$v'" >&2; exit 2
  fi
done
source benchmarks/gpu_steps.sh  # find_python, step, skip, write_status
find_python
RECIPE=recipes/smollm2-135m-xdlm-lora-mbpp-sft.yaml

# Sizes. GPU: docs/gpu.md "One prepared GPU result" has the arithmetic behind each number. Rehearsal:
# the same commands and keys at the smallest sizes that still take every path (docs/gpu.md: its time).
if [ $REHEARSE = 1 ]; then
  : "${TRAIN_STEPS:=2}" "${BATCH:=2}" "${PROBLEMS:=2}"
  EVAL_STEPS="2 4"; EVAL_BATCH=2; AR_BATCH=2; PRECISION=no; DTYPE=float32; WORKERS=2
  TRAIN_EXTRA=(data.seq_len=128 data.max_prompt_len=96 training.eval_batches=1)  # GPU: the recipe's 512 / 384 / 4
  GEN=(--gen-length 16 --block-length 16)
  L_SETUP=300 L_TRAIN=600 L_EVAL=600 L_AR=300 L_COMPARE=120 L_REPORT=180  # caps for a loaded CPU
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_result.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False): nothing trained." >&2
    echo "Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or rehearse it here with --rehearse." >&2
    exit 2
  fi
  : "${TRAIN_STEPS:=120}" "${BATCH:=32}" "${PROBLEMS:=500}"
  EVAL_STEPS="16 32"; EVAL_BATCH=64; AR_BATCH=256; PRECISION=bf16; DTYPE=bfloat16; WORKERS=$(nproc)
  TRAIN_EXTRA=()
  GEN=()  # the recipe's gen_length / block_length, read below
  L_SETUP=50 L_TRAIN=60 L_EVAL=70 L_AR=35 L_COMPARE=10 L_REPORT=15  # 370 s
fi
WORK=${WORK:-$(mktemp -d -t xdlm-gpu-result.XXXXXX)}
if [ -z "$RES" ]; then
  if [ $REHEARSE = 1 ]; then RES=$WORK/result; else
    NAME=$("$PY" -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '_', torch.cuda.get_device_name().lower()).strip('_'))")
    RES=benchmarks/results/gpu_result_$NAME
  fi
fi
if [ -d "$RES" ] && [ -n "$(ls -A "$RES")" ]; then
  echo "gpu_result.sh: $RES is not empty (an earlier result; its samples would be resumed into this one): move it away or pass --out" >&2
  exit 2
fi
mkdir -p "$RES/logs" "$WORK/runs"
SITE=$WORK/site
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded
echo "gpu_result.sh$([ $REHEARSE = 1 ] && echo ' --rehearse'): results in $RES, runs in $WORK, python $PY"

logged() {  # logged LOG CMD...: CMD's output to the terminal and to LOG; CMD's exit status
  local log=$1; shift
  "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}
export -f logged
run() {  # run NAME LIMIT CMD...: a step whose output is also kept in RES/logs/NAME.log
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" bash -c 'logged "$@"' _ "$RES/logs/${name//[^a-zA-Z0-9.=_-]/_}.log" "$@"
}

# 1. Setup: carried wheels (offline), the imports, the device, the Triton kernel checked against
#    the torch path, and the embedded model converted once (so the trainings do not pay for it).
SETUP=("$PY" benchmarks/gpu_result.py setup --result-dir "$RES")
[ $REHEARSE = 1 ] && SETUP+=(--rehearse)
if [ ${#WHEELS[@]} -gt 0 ]; then
  run setup $L_SETUP bash -c '"$1" benchmarks/gpu_result.py wheels --target "$2" "${@:4}" && eval "$3"' _ \
    "$PY" "$SITE" "$(printf '%q ' "${SETUP[@]}")" "${WHEELS[@]}"
else
  run setup $L_SETUP "${SETUP[@]}"
fi
eval "$("$PY" benchmarks/gpu_result.py recipe "$RECIPE" 2>/dev/null || echo 'PROMPT_FORMAT=original GEN_LENGTH=256 BLOCK_LENGTH=256')"
[ ${#GEN[@]} -eq 0 ] && GEN=(--gen-length "$GEN_LENGTH" --block-length "$BLOCK_LENGTH")

# 2-3. The same budget for each k: steps, batch, data, seed, schedule; held-out NELBO and a checkpoint at
#      half and at the end (a training stopped by its limit still leaves its half-way checkpoint).
for K in 0.1 0; do
  run "train k=$K" $L_TRAIN "$PY" -m xdlm_tune.cli train "$RECIPE" diffusion.k=$K \
    training.output_dir="$WORK/runs/k=$K" training.max_steps=$TRAIN_STEPS training.per_device_batch_size=$BATCH \
    training.mixed_precision="'$PRECISION'" training.warmup_steps=$(( (TRAIN_STEPS + 9) / 10 )) \
    training.eval_every=$(( (TRAIN_STEPS + 1) / 2 )) training.save_every=$(( (TRAIN_STEPS + 1) / 2 )) training.log_every=10 "${TRAIN_EXTRA[@]}"
done

# 4-6. MBPP test problems at each step budget: xdlm for k = 0.1, confidence for k = 0 (xdlm's
#      k = 0 case), dual cache refreshed after revisions (docs/sampling.md "Fast sampling"); the AR baseline.
EVAL=("$PY" -m xdlm_tune.cli eval --benchmark mbpp --limit "$PROBLEMS" --prompt-format "$PROMPT_FORMAT" "${GEN[@]}"
  --dtype $DTYPE --timeout 3 --workers "$WORKERS")  # 3 s per program: a looping answer must not eat the limit
for K in 0.1 0; do
  SAMPLER=$([ $K = 0 ] && echo confidence || echo xdlm)
  run "eval k=$K" $L_EVAL "${EVAL[@]}" --checkpoint "$WORK/runs/k=$K" --label "k=$K" --sampler $SAMPLER \
    --steps $EVAL_STEPS --cache dual --refresh step --batch-size $EVAL_BATCH --out "$RES/eval_k$K"
done
run "eval AR" $L_AR "${EVAL[@]}" --model smollm2-135m --no-diffusion --steps $EVAL_STEPS --batch-size $AR_BATCH \
  --out "$RES/eval_ar"

# 7. Paired comparison, where this version of xdlm-tune has the command.
if "$PY" -m xdlm_tune.cli compare --help >/dev/null 2>&1; then
  step "compare k=0.1 vs k=0" $L_COMPARE bash -c 'logged "$1/compare.txt" "${@:2}"' _ "$RES" \
    "$PY" -m xdlm_tune.cli compare "$RES/eval_k0" "$RES/eval_k0.1" --allow-different k sampler \
    --json "$RES/compare.json"
else
  skip "compare k=0.1 vs k=0" "this xdlm-tune has no compare command (xdlm-tune compare --help failed)"
fi

# 8. The report: statuses, training table, all rows in one table and one plot, the comparison.
write_status "$RES/status.json"
step report $L_REPORT "$PY" benchmarks/gpu_result.py report --result-dir "$RES" --work "$WORK" \
  $([ $REHEARSE = 1 ] && echo --rehearse) --plan "train_steps=$TRAIN_STEPS" "batch=$BATCH" \
  "problems=$PROBLEMS" "eval_steps=${EVAL_STEPS// /+}" "precision=$PRECISION" "eval_dtype=$DTYPE"
write_status "$RES/status.json"
BAD=0
for n in "${ORDER[@]}"; do echo "  $n: ${STATUS[$n]}"; case "${STATUS[$n]}" in FAILED*|TIMED*) BAD=1 ;; esac; done
echo "gpu_result.sh: $RES/report.md"
exit $BAD  # 1 when a step failed or timed out (what finished is kept either way)
