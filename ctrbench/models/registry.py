"""The architecture registry: ``@register("mian")`` on an ``nn.Module`` class.

Model *names* (``mian_wo_iuim``) are cards in ``models/``; each names an architecture here.
"""

from __future__ import annotations

from ctrbench.registry import Registry

ARCHITECTURES: Registry[type] = Registry("architecture")
register = ARCHITECTURES.register
