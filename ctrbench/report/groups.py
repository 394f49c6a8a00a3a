"""One row = one configuration: a model's runs grouped by dataset identity and model config.

A model's finished runs on a dataset are averaged only when they share one dataset identity
(data hashes, protocol, version) and one resolved model config (params and train settings,
epochs included). Otherwise the model is refused (``mixed_identity`` / ``mixed_config``) and the
note names the keys that differ and which seeds carry each value: never averaged. The protocol
(epoch cap, early stopping, optimiser) of a dataset's runs is described for the table header.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ctrbench.analysis import stats
from ctrbench.report.data import ResultSet, finite_auc

NAN = float("nan")


@dataclass
class ModelRuns:
    """One model's runs on one dataset."""

    model: str
    status: str  # "ok" | "mixed_identity" | "mixed_config" | "no_finished_runs"
    runs: pd.DataFrame  # finished runs (sorted by seed)
    n_failed: int
    identity: str = ""
    protocol: str = ""
    version: str = ""
    note: str = ""
    config: str = ""  # hash of the resolved model config (empty when refused)

    def seed_values(self, column: str = "test_auc") -> dict[int, float]:
        return dict(zip(self.runs["seed"].astype(int), self.runs[column].astype(float)))

    def summary(self, column: str) -> stats.Summary:
        if self.status != "ok":
            return stats.Summary(0, NAN, NAN, NAN, NAN)
        if column == "test_auc":
            return stats.summarize_auc(self.runs[column].to_numpy())
        return stats.summarize(self.runs[column].to_numpy())


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_difference(flats: Sequence[Mapping[str, Any]], seeds: Sequence[Sequence[int]],
                        limit: int = 4) -> str:
    """``train.epochs 1 (seed 0, 1) vs 3 (seed 3)``: the keys whose values differ between
    configurations (flattened dicts), each value with the seeds that carry it."""
    keys = sorted(set().union(*flats))
    differing = [k for k in keys if len({repr(f.get(k, "<missing>")) for f in flats}) > 1]
    parts = []
    for key in differing[:limit]:
        values = [f"{_short(f.get(key, '<missing>'))} (seed {', '.join(map(str, s))})"
                  for f, s in zip(flats, seeds)]
        parts.append(f"{key} " + " vs ".join(values))
    if len(differing) > limit:
        parts.append(f"and {len(differing) - limit} more key(s)")
    return "; ".join(parts) or "hashes differ"


def _split_note(rs: ResultSet, fin: pd.DataFrame, column: str, flats: Mapping[str, dict]
                ) -> str:
    by_key = fin.groupby(column, sort=True)
    seeds = [sorted(g["seed"].astype(int)) for _, g in by_key]
    first = [flats.get(str(g["path"].iloc[0]), {}) for _, g in by_key]
    return describe_difference(first, seeds)


def group_models(rs: ResultSet, dataset: str) -> dict[str, ModelRuns]:
    """Model name -> its runs on ``dataset``; mixed identities or configs are refused and the
    difference named."""
    runs = rs.runs[rs.runs["dataset"] == dataset]
    out: dict[str, ModelRuns] = {}
    for model, grp in runs.groupby("model", sort=True):
        fin = grp[grp["status"] == "finished"].sort_values("seed")
        broken = fin[~finite_auc(fin)]
        fin = fin[finite_auc(fin)]
        n_failed = int((grp["status"] != "finished").sum()) + len(broken)
        left_out = non_finite_note(broken)
        if fin.empty:
            out[model] = ModelRuns(model, "no_finished_runs", fin, n_failed,
                                   note=left_out or "no finished runs")
            continue
        if fin["identity"].nunique() > 1:
            note = ("refused: records mix dataset identities: "
                    + _split_note(rs, fin, "identity", rs.identities))
            out[model] = ModelRuns(model, "mixed_identity", fin, n_failed,
                                   note=_join(note, left_out))
            continue
        if fin["config"].nunique() > 1:
            note = ("refused: records mix configurations (one row = one configuration; rerun "
                    "or move one set to another --results): "
                    + _split_note(rs, fin, "config", rs.configs))
            out[model] = ModelRuns(model, "mixed_config", fin, n_failed,
                                   note=_join(note, left_out))
            continue
        first = fin.iloc[0]
        out[model] = ModelRuns(model, "ok", fin, n_failed, str(first["identity"]),
                               str(first["protocol"]), str(first["version"]), note=left_out,
                               config=str(first["config"]))
    return out


def non_finite_note(broken: pd.DataFrame) -> str:
    """What the report says of finished records whose test AUC is nan or inf: left out of
    every mean and test (as `check` refuses them), never silently."""
    if broken.empty:
        return ""
    seeds = ", ".join(f"{int(s)} ({v})" for s, v in zip(broken["seed"], broken["test_auc"]))
    return (f"test AUC not finite in the finished record(s) of seed {seeds}: left out of "
            "every mean and test (listed in failed)")


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def protocol_text(rs: ResultSet, groups: Mapping[str, ModelRuns]) -> str:
    """``protocol: at most 10 epoch(s), early stopping on validation AUC (patience 2), optimiser
    adam, lr 0.001, batch 128``; a key that differs between models lists each value with its
    models."""
    per_model = {m: rs.configs.get(str(g.runs["path"].iloc[0]), {})
                 for m, g in groups.items() if g.status == "ok"}
    if not per_model:
        return "protocol: no usable runs"

    def one(key: str, fmt: Callable[[Any], str]) -> str:
        by_value: dict[str, tuple[Any, list[str]]] = {}
        for m, flat in per_model.items():
            value = flat.get(key, "?")
            by_value.setdefault(repr(value), (value, []))[1].append(m)
        if len(by_value) == 1:
            return fmt(next(iter(by_value.values()))[0])
        return " / ".join(f"{fmt(v)} ({', '.join(ms)})" for v, ms in by_value.values())

    return ("protocol: " + one("train.epochs", lambda v: f"at most {v} epoch(s)") + ", "
            + one("train.patience", lambda v: f"early stopping on validation AUC (patience {v})")
            + ", " + one("train.optimizer", lambda v: f"optimiser {v}")
            + ", " + one("train.lr", lambda v: f"lr {v}")
            + ", " + one("train.batch_size", lambda v: f"batch {v}"))
