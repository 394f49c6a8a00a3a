"""Seeding: one call seeds python, numpy and torch and returns explicit generators."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Generators:
    seed: int
    numpy: np.random.Generator
    torch: torch.Generator  # CPU generator (batch permutations, sampling)


def seed_everything(seed: int) -> Generators:
    """Seed the global RNGs (python, numpy, torch incl. CUDA) and return fresh generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds code that uses the global RNG
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return Generators(seed=seed, numpy=np.random.default_rng(seed), torch=gen)
