"""Optuna studies: search spaces, storages, the objective and tuned-card outputs."""
