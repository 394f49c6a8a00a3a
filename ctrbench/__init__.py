"""ctrbench: an honest benchmark suite for sequential click-through-rate models."""

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning (before torch loads its OpenMP runtime): on a
# shared machine spinning made runs 10-20x slower (ctrbench/openmp.py).
from ctrbench.allocator import keep_freed_memory as _keep_freed_memory
from ctrbench.openmp import set_passive_wait_policy as _passive

_passive()
# glibc keeps the memory a training step frees for the next one instead of page-faulting it in
# again every step (ctrbench/allocator.py; CTRBENCH_MALLOC=default leaves glibc alone).
_keep_freed_memory()
