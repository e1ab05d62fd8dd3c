# Shared by benchmarks/gpu_check.sh and benchmarks/gpu_result.sh (sourced, not run): the
# interpreter they use and the step runner that gives every step its own time limit.
#
#   find_python            sets PY: --python / $PYTHON if given, else .venv/bin/python, else python3
#   step NAME LIMIT CMD..  runs CMD under `timeout LIMIT`; records "ok (Ns)", "TIMED OUT after LIMITs"
#                          or "FAILED (exit N, Ns)" in STATUS[NAME] and NAME in ORDER
#   skip NAME REASON       records "skipped: REASON" (a step that cannot apply here; not a failure)
#   write_status FILE      STATUS in ORDER as one JSON object
declare -A STATUS
ORDER=()

find_python() {
  if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3 || command -v python); fi
  fi
}

step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  local took=$((SECONDS - t0))
  case $rc in
    0) STATUS[$name]="ok (${took}s)" ;;
    124|137) STATUS[$name]="TIMED OUT after ${limit}s" ;;
    *) STATUS[$name]="FAILED (exit $rc, ${took}s)" ;;
  esac
  ORDER+=("$name")
  echo "== $name: ${STATUS[$name]}"
}

skip() {
  STATUS[$1]="skipped: $2"
  ORDER+=("$1")
  echo "== $1: ${STATUS[$1]}"
}

write_status() {
  local args=() n
  for n in "${ORDER[@]}"; do args+=("$n" "${STATUS[$n]}"); done
  "$PY" -c 'import json, sys; a = sys.argv; json.dump(dict(zip(a[2::2], a[3::2])), open(a[1], "w"), indent=1)' "$1" "${args[@]}"
}
