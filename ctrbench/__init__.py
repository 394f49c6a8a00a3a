"""ctrbench: an honest benchmark suite for sequential click-through-rate models."""

__version__ = "0.1.0"
