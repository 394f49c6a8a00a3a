"""Metrics and statistical tests (no ctrbench imports: the ground floor)."""
