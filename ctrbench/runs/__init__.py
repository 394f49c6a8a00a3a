"""Executing runs: the multi-run driver and per-run locks."""
