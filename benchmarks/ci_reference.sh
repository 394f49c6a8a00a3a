#!/usr/bin/env bash
# The small seeded benchmark behind CI's regression gate (ctrbench check).
#
#   bash benchmarks/ci_reference.sh [CTRBENCH] [RESULTS_DIR]
#
# Trains lr, din and mian on the synthetic dataset, 3 seeds, 2 epochs, in 2 worker processes of
# one thread each (so the runs are bit-for-bit repeatable on CPU). A few minutes on 2 cores.
# CI runs it into a scratch results directory and compares with the committed reference:
#   ctrbench check --baseline results/reference/ci-synthetic.csv --results RESULTS_DIR
# To regenerate the reference on purpose (after a change that is meant to move the numbers):
#   bash benchmarks/ci_reference.sh ctrbench .cache/ci-results
#   ctrbench check --baseline results/reference/ci-synthetic.csv --results .cache/ci-results --update
set -euo pipefail
CTRBENCH="${1:-ctrbench}"
RESULTS="${2:-.cache/ci-results}"
export OMP_NUM_THREADS=1
"$CTRBENCH" run --models lr,din,mian --dataset synthetic --seeds 3 --epochs 2 --jobs 2 \
  --results "$RESULTS" -q
