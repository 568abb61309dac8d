#!/usr/bin/env bash
# Every check of the project on MLX's GPU backend (Metal on a Mac, CUDA on Linux): the unit tests, then
# every chapter notebook against the outputs stored by the CPU run. Prints one summary line at the end.
#
#   scripts/gpu_check.sh              # from the repository root, with mlxllm's environment active
#   JOBS=8 scripts/gpu_check.sh       # test workers (pytest-xdist, when installed) and notebooks run at once
#
# On the lent CUDA machine, ../shared/gpu/prepare's kit lacks SmolLM2 and `gguf`: stage them with
# scripts/gpu_extras.sh first (its header has the calls), or Chapter 7 and tests/test_gguf.py fail.
# Exit status 0 only when both parts pass. Logs go to $GPU_CHECK_LOGS (default: a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
jobs=${JOBS:-4}
logs=${GPU_CHECK_LOGS:-$(mktemp -d)}
mkdir -p "$logs"

device=$($python -c 'import mlx.core as mx; print(mx.__version__, mx.default_device())') || exit 2
case "$device" in
    *gpu*) ;;
    *) echo "gpu_check: MLX runs on '$device' here, not on a GPU; nothing to check" >&2; exit 2 ;;
esac
start=$(date +%s)

# unit tests (the CUDA backend compiles kernels on first use: workers in parallel share that cost)
xdist=()
$python -c 'import xdist' 2>/dev/null && xdist=(-n "$jobs")
( $python -m pytest -q -o addopts='' -p no:cacheprovider "${xdist[@]}" tests >"$logs/tests.log" 2>&1
  echo $? >"$logs/tests.rc"; echo $(( $(date +%s) - start )) >"$logs/tests.seconds" ) &

# notebooks, each in its own process, at most $jobs at a time
for notebook in book/*.ipynb; do
    name=$(basename "$notebook" .ipynb)
    while [ "$(jobs -rp | wc -l)" -gt "$jobs" ]; do sleep 1; done
    ( $python -m pytest -q -o addopts='' -p no:cacheprovider --nbval --nbval-current-env "$notebook" \
        >"$logs/nb-$name.log" 2>&1; echo $? >"$logs/nb-$name.rc" ) &
done
wait

count() {  # count WORD FILE...: sum of "N WORD" in pytest's final lines
    cat "${@:2}" | grep -Eo "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'
}
tests_passed=$(count passed "$logs/tests.log")
tests_failed=$(( $(count failed "$logs/tests.log") + $(count error "$logs/tests.log") ))
cells_passed=$(count passed "$logs"/nb-*.log)
cells_failed=$(( $(count failed "$logs"/nb-*.log) + $(count error "$logs"/nb-*.log) ))
status=0
grep -qx 0 "$logs/tests.rc" || status=1
for rc in "$logs"/nb-*.rc; do grep -qx 0 "$rc" || status=1; done
if [ "$status" != 0 ]; then
    grep -h -E "^(FAILED|ERROR)" "$logs"/*.log | head -40
fi
echo "gpu_check: mlx $device · tests: $tests_passed passed, $tests_failed failed ($(cat "$logs/tests.seconds") s)" \
     "· notebooks: $cells_passed cells passed, $cells_failed failed · $(( $(date +%s) - start )) s in all · logs: $logs"
exit $status
