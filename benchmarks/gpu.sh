#!/usr/bin/env bash
# One command for a GPU machine (issue 13, part 4), designed for <= 9 minutes on one GPU:
#   1. the CUDA test subset (tests/test_cuda.py, `pytest -m cuda`)             <= 90 s
#   2. every table2 model, 50 timed steps at batch 128, 1024 and 4096, bf16 autocast, the
#      train split kept on the device: samples/s and peak memory            <= 120 s
#   3. one epoch of MIAN on Electronics-scale generated data (the generator of
#      `ctrbench generate --scale electronics`, 1.69M reviews), batch 4096: generation,
#      preparation, the epoch, validation and test (54 s on an H200 machine) <= 330 s
#      GPU_EPOCH_SCALE=books: Books scale (8.9M reviews); its CPU-bound generation and
#      preparation ran past 330 s on that machine, so it gets 900 s (then ~15 minutes in all)
#   4. one JSON with every figure: $OUT if set, else benchmarks/results/ (see README there).
# A stage that fails or runs out of its time is recorded as such and the next one runs; the
# exit status is 1 when any stage failed.
#
# Usage (from the repository root):
#   bash benchmarks/gpu.sh              # on the GPU machine
#   bash benchmarks/gpu.sh --dry-run    # CPU, tiny sizes: checks the script itself (~2-4 min)
# Environment: PYTHON (default: python), CTRBENCH_HOME (default: a temporary directory),
# GPU_EPOCH_SCALE (electronics | books; default electronics).
set -euo pipefail

MODE=gpu
if [[ "${1:-}" == "--dry-run" ]]; then MODE=dry-run; shift; fi
if [[ $# -gt 0 ]]; then echo "usage: $0 [--dry-run]" >&2; exit 2; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ctrbench-gpu.XXXXXX")"
RESULTS_OUT="${OUT:-$ROOT/benchmarks/results}"
export CTRBENCH_HOME="${CTRBENCH_HOME:-$WORK/home}"
export CTRBENCH_CARDS="$WORK/cards"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
trap 'rm -rf "$WORK"' EXIT

if [[ "$MODE" == gpu ]]; then
    DEVICE=cuda; SCALE="${GPU_EPOCH_SCALE:-electronics}"; TEST_DEVICE=cuda
    T_TESTS=90; T_THROUGHPUT=120; T_BOOKS=330
    if [[ "$SCALE" == books ]]; then T_BOOKS=900; fi
    THROUGHPUT_ARGS=(--rows 200000 --warmup 10 --steps 50 --batch-sizes 128,1024,4096)
    EPOCH_BATCH=4096
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || {
        echo "gpu.sh: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2; exit 3; }
else
    DEVICE=cpu; SCALE=default; TEST_DEVICE=cpu
    T_TESTS=300; T_THROUGHPUT=300; T_BOOKS=600
    THROUGHPUT_ARGS=(--rows 3000 --warmup 1 --steps 2 --batch-sizes 128,256)
    EPOCH_BATCH=1024
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
echo "gpu.sh ($MODE): work $WORK, results to $RESULTS_OUT" >&2

STAGES="$WORK/stages.json"
echo '{}' > "$STAGES"
# record STAGE EXIT_STATUS SECONDS into stages.json
record() {
    "$PY" - "$STAGES" "$1" "$2" "$3" <<'PYEOF'
import json, sys
path, stage, code, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
stages = json.load(open(path))
status = {0: "ok", 124: "timed out", 137: "timed out"}.get(code, f"failed (exit {code})")
stages[stage] = {"status": status, "exit_status": code, "seconds": round(seconds, 1)}
json.dump(stages, open(path, "w"), indent=1)
PYEOF
}
FAILED=0
# run_stage NAME LIMIT_SECONDS COMMAND...: run under a time limit, record the outcome
run_stage() {
    local name=$1 limit=$2; shift 2
    local start=$SECONDS code=0
    echo "== $name (limit ${limit}s): $*" >&2
    timeout --signal=TERM --kill-after=15 "$limit" "$@" || code=$?
    record "$name" "$code" "$((SECONDS - start))"
    if [[ $code -ne 0 ]]; then FAILED=1; echo "== $name: exit $code" >&2; fi
}

run_stage tests "$T_TESTS" env CTRBENCH_TEST_DEVICE="$TEST_DEVICE" \
    "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
    --junitxml="$WORK/tests.xml"

run_stage throughput "$T_THROUGHPUT" "$PY" benchmarks/gpu_bench.py throughput \
    --device "$DEVICE" --json "$WORK/throughput.json" "${THROUGHPUT_ARGS[@]}"

CARD="$("$PY" benchmarks/gpu_bench.py books-card --scale "$SCALE" --cards "$CTRBENCH_CARDS")"
run_stage books "$T_BOOKS" "$PY" -m ctrbench.cli run -m mian -d "$CARD" --seed-list 0 \
    --epochs 1 --device "$DEVICE" --set "train.batch_size=$EPOCH_BATCH" \
    --set train.eval_batch_size=65536 --results "$WORK/results" -q

"$PY" benchmarks/gpu_bench.py collect --work "$WORK" --out "$RESULTS_OUT" --mode "$MODE"
exit "$FAILED"
