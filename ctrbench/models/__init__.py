"""Model zoo: one module per family, registered by architecture name.

Importing this package imports every family module (below) so that the registry is complete
before anything can use it.
"""

from __future__ import annotations

from ctrbench.models import (  # noqa: F401  (each family registers its architecture(s))
    dcn,
    deepfm,
    dien,
    din,
    linear,
    mian,
    pop,
    wide_deep,
    xdeepfm,
)
from ctrbench.models.base import AttentionWeights, CTRModel, Explanation, count_parameters
from ctrbench.models.config import ModelConfig
from ctrbench.models.registry import ARCHITECTURES, build_model, config_of, register

__all__ = ["ARCHITECTURES", "AttentionWeights", "CTRModel", "Explanation", "ModelConfig",
           "build_model", "config_of", "count_parameters", "register"]
