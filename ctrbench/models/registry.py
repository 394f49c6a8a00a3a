"""The architecture registry: ``@register("mian")`` on a :class:`CTRModel` subclass with a
``config_class`` (its typed parameters, :mod:`ctrbench.models.config`).

Model *names* (``mian_wo_iuim``) are cards in ``models/``; each names an architecture here. The
families register themselves when ``ctrbench.models`` is imported (its ``__init__`` imports
every family module), which happens before this module can be used: importing
``ctrbench.models.registry`` runs the package first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ctrbench.models.base import CTRModel
from ctrbench.models.config import ModelConfig
from ctrbench.registry import Registry
from ctrbench.schema import Schema

ARCHITECTURES: Registry[type[CTRModel]] = Registry("architecture")


def register(name: str) -> Callable[[type[CTRModel]], type[CTRModel]]:
    """Decorator: register an architecture; its ``config_class`` must be a ModelConfig."""

    def decorator(cls: type[CTRModel]) -> type[CTRModel]:
        config = getattr(cls, "config_class", None)
        if not (isinstance(config, type) and issubclass(config, ModelConfig)):
            raise TypeError(f"architecture {name!r}: {cls.__name__}.config_class must be a "
                            "ModelConfig subclass")
        ARCHITECTURES.add(name, cls)
        return cls

    return decorator


def config_of(arch: str) -> type[ModelConfig]:
    """The typed parameters of architecture ``arch`` (an unknown name suggests close ones)."""
    return ARCHITECTURES.get(arch).config_class


def build_model(arch: str, schema: Schema, params: Mapping[str, Any] | ModelConfig) -> CTRModel:
    """Instantiate a registered architecture from a card's params (validated by its config
    class: an unknown key or a bad value is a CardError) or from a ready config."""
    cls = ARCHITECTURES.get(arch)
    config = params if isinstance(params, ModelConfig) else \
        cls.config_class.from_params(f"parameters of architecture {arch!r}", params)
    if not isinstance(config, cls.config_class):
        raise TypeError(f"architecture {arch!r} takes a {cls.config_class.__name__}, "
                        f"got a {type(config).__name__}")
    return cls(schema, config)
