"""Model zoo: one module per family, registered by architecture name.

Importing this package imports every family module so that the registry is complete.
"""

from __future__ import annotations

import importlib

from ctrbench.models.base import CTRModel, build_model, count_parameters
from ctrbench.models.registry import ARCHITECTURES, register

# One module per family; each registers its architecture(s) with @register(...).
_FAMILIES = ("linear", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien", "mian", "pop")

for _family in _FAMILIES:
    importlib.import_module(f"ctrbench.models.{_family}")

__all__ = ["ARCHITECTURES", "CTRModel", "build_model", "count_parameters", "register"]
