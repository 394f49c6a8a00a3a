"""ctrbench: an honest benchmark suite for sequential click-through-rate models."""

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning (before torch loads its OpenMP runtime): on a
# shared machine spinning made runs 10-20x slower (ctrbench/openmp.py).
from ctrbench.openmp import set_passive_wait_policy as _passive

_passive()
