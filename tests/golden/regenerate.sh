#!/bin/sh
# Regenerate the fixture run records and the golden report files (tests/test_report.py compares
# `ctrbench report` on the fixtures with these files byte for byte). Run from anywhere:
#   sh tests/golden/regenerate.sh
# Review the diff before committing: a change here is a change in what users see.
set -e
cd "$(dirname "$0")/../.."
python tests/fixtures/records/make_records.py
rm -f tests/golden/*.md tests/golden/*.csv
CTRBENCH_CARDS=tests/fixtures/records/cards ctrbench report \
  --results tests/fixtures/records --out tests/golden --bootstrap 200 --no-plots > /dev/null
