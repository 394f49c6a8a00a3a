"""Reproducibility: what a seeded run's numbers depend on, and what its record says about it.

Every test compares results for equality (never timings) on tiny data.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import train_fixtures as tf

from ctrbench.cards import load_model_card
from ctrbench.engine.train import train_and_evaluate
from ctrbench.environment import environment

TINY_SYNTHETIC = """
description = "tiny synthetic (reproducibility tests)"
reader = "synthetic"
protocol = "{protocol}"
version = 1
license = "generated"

[reader_params]
seed = 5
n_users = 60
n_items = 50
n_meta_items = 55
n_cates = 6
mean_events = 7.0

[protocol_params]
seed = 9
max_len = 6
"""


def _disturb_global_rngs(salt: int) -> None:
    """Leave python's, numpy's and torch's global generators somewhere else."""
    random.seed(salt)
    np.random.seed(salt)  # noqa: NPY002 - the global state is what is being disturbed
    torch.manual_seed(salt)
    random.random(), np.random.random(salt % 7 + 1), torch.rand(salt % 5 + 1)  # noqa: NPY002


# --------------------------------------------------------------------------- the record
def test_environment_records_the_cpu_kernel_capability():
    """ATen's CPU kernel set (AVX512 / AVX2 / DEFAULT, or ``ATEN_CPU_CAPABILITY``) changes a
    run's float results at the same thread count (DIN's 1-epoch logloss by ~1e-9): the record
    must say which set ran, as it says the thread count."""
    env = environment("cpu")
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


# --------------------------------------------------------------------------- data
def _prepare_here(name: str):
    from ctrbench.data.prepare import prepare_dataset

    return prepare_dataset(name)


def _arrays_digest(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*.npy"))}


@pytest.mark.parametrize("protocol", ["din", "dien"])
def test_prepared_synthetic_depends_only_on_the_card(home, tmp_path, protocol):
    """Generator and negatives: the same store from another process, another hash seed,
    another working directory, another cache root and other global RNG states."""
    (home / "tinysyn.toml").write_text(TINY_SYNTHETIC.format(protocol=protocol))
    _disturb_global_rngs(1)
    here = _prepare_here("tinysyn")
    other_home, cwd = tmp_path / "other-home", tmp_path / "elsewhere"
    cwd.mkdir()
    code = ("import json, random, numpy as np; random.seed(7); np.random.seed(3); "
            "np.random.random(5); from ctrbench.data.prepare import prepare_dataset; "
            "d = prepare_dataset('tinysyn'); print(json.dumps([str(d.path), "
            "d.meta['data_hash']]))")
    env = {**os.environ, "CTRBENCH_HOME": str(other_home), "PYTHONHASHSEED": "12345",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    path, digest = json.loads(done.stdout.strip().splitlines()[-1])
    assert digest == here.meta["data_hash"]
    assert Path(path).name == here.path.name
    assert _arrays_digest(Path(path)) == _arrays_digest(here.path)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "small",
                                 rows=(384, 128, 256))


def _card(name: str):
    return load_model_card(name).with_overrides({"train": {"epochs": 1, "batch_size": 128}})


def _numbers(outcome) -> tuple:
    rows = [(r.train_loss, r.train_aux_loss, r.valid_auc, r.valid_logloss)
            for r in outcome.epochs]
    return rows, outcome.test, outcome.test_scores["scores"].tobytes()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_after_other_models_in_one_process_equals_the_first(small):
    """``--jobs 1`` with several models: nothing a previous run leaves behind (global RNG
    state, module caches, the shared data arrays) changes the next run's numbers."""
    first = _numbers(train_and_evaluate(small, _card("din"), seed=3, device="cpu",
                                        progress=False))
    for other in ("mian", "pop"):
        train_and_evaluate(small, _card(other), seed=4, device="cpu", progress=False)
    _disturb_global_rngs(2)
    again = _numbers(train_and_evaluate(small, _card("din"), seed=3, device="cpu",
                                        progress=False))
    assert again == first
