#!/usr/bin/env bash
# The main job from a clone with nothing beside it, offline (issue 22): clone this checkout into an
# empty temporary folder, then, with the Hub switched off, run every stage of the demo there with
# training cut to 4 steps (`xdlm-tune demo --smoke`: train -> eval MBPP + genppl -> export -> sample),
# and score the result on 2 MBPP and 2 HumanEval problems. The clone's own code runs (PYTHONPATH, checked);
# the packages come from the environment `make test` built. Prints what it does, line by line.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$here/.venv/bin/python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git clone -q "$here" "$tmp/xdlm-tune"
echo "[clean-clone] cloned into $tmp/xdlm-tune; beside it: $(ls -A "$tmp" | tr '\n' ' ')"
cd "$tmp/xdlm-tune"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD"
where="$("$PY" -c 'import xdlm_tune, os; print(os.path.dirname(xdlm_tune.__file__))')"
[ "$where" = "$PWD/xdlm_tune" ] || { echo "[clean-clone] FAILED: imported xdlm_tune from $where, not the clone"; exit 1; }
if grep -rn "\.\./shared" xdlm_tune README.md Makefile >/dev/null; then
  echo "[clean-clone] FAILED: these name ../shared, which a clone does not have:"
  grep -rln "\.\./shared" xdlm_tune README.md Makefile
  exit 1
fi
start=$SECONDS
"$PY" -m xdlm_tune.cli demo --smoke
"$PY" -m xdlm_tune.cli eval --checkpoint runs/demo-smoke --benchmark mbpp --limit 2 --steps 8 \
  --gen-length 48 --block-length 48 --out runs/clean-clone/mbpp
"$PY" -m xdlm_tune.cli eval --checkpoint runs/demo-smoke --benchmark humaneval --limit 2 --steps 8 \
  --gen-length 48 --block-length 48 --out runs/clean-clone/humaneval
for f in runs/demo-smoke/eval/mbpp/summary.md runs/clean-clone/mbpp/summary.md runs/clean-clone/humaneval/summary.md; do
  grep -q "Benchmark data: shipped" "$f" || { echo "[clean-clone] FAILED: $f does not name the shipped data"; exit 1; }
done
echo "[clean-clone] ok in $((SECONDS - start)) s: demo --smoke, eval mbpp --limit 2, eval humaneval --limit 2, offline, nothing beside the clone"
