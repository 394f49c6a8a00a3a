#!/usr/bin/env bash
# The seeded benchmark behind CI's regression gate (ctrbench check).
#
#   bash benchmarks/ci_reference.sh [CTRBENCH] [RESULTS_DIR] [--update]
#
# Trains lr, din and mian on the synthetic dataset with 8 seeds (0-7) and the FULL protocol (at
# most 10 epochs, early stopping on validation AUC, patience 2: no --epochs cap), in 2 worker
# processes of one thread each, so the runs are bit-for-bit repeatable on CPU. Design: every
# model's detectable drop (80% power, one-sided paired t, alpha 0.05) is <= 0.01 AUC; cost about
# 24 runs x (10 + 30 + 110) s of one core / 2 workers ~= 10 min on 2 free cores (docs/statistics.md).
# CI runs it into a scratch results directory and compares with the committed reference:
#   ctrbench check --baseline results/reference/ci-synthetic.csv --results RESULTS_DIR
# With --update it then rewrites the reference from these runs (on purpose, after a change that
# is meant to move the numbers) and prints each model's detectable drop:
#   bash benchmarks/ci_reference.sh ctrbench .cache/ci-results --update
set -euo pipefail
CTRBENCH="${1:-ctrbench}"
RESULTS="${2:-.cache/ci-results}"
UPDATE="${3:-}"
REFERENCE=results/reference/ci-synthetic.csv
export OMP_NUM_THREADS=1
start=$SECONDS
"$CTRBENCH" run --models lr,din,mian --dataset synthetic --seeds 8 --jobs 2 \
  --results "$RESULTS" -q
echo "ci_reference: the run step took $((SECONDS - start)) s (finished runs are skipped)" >&2
if [ "$UPDATE" = "--update" ]; then
  "$CTRBENCH" check --baseline "$REFERENCE" --results "$RESULTS" --update
fi
