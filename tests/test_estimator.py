"""Tests for jaxkmeans.KMeans: TF 2.15 parity, training semantics, variables, checkpoints.

Input forms are covered in test_inputs.py, export in test_export.py.
"""

import hashlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans.checkpoint import CheckpointWarning

# TF 2.15's recorded outputs, committed in tests/data (see tests/data/TF215_REFERENCE.md
# for what TF does and what jaxkmeans keeps or fixes).
REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "tf215_fullbatch.json"

RNG = np.random.default_rng(0)
# 60 points in 3 well separated blobs, float32, shuffled.
X = np.concatenate(
    [m + RNG.normal(size=(20, 2)) for m in ([0.0, 0.0], [8.0, 8.0], [0.0, 8.0])]
).astype(np.float32)[RNG.permutation(60)]
INIT = X[[0, 1, 2]].copy()
BATCHES = [X[0:20], X[20:40], X[40:60]]
K = 3
NEVER = 10**6  # mini_batch_steps_per_iteration that never syncs within a test


def make(tmp_path, name="m", k=K, **kw):
    kw.setdefault("initial_clusters", INIT)
    kw.setdefault("use_mini_batch", False)
    kw.setdefault("seed", 0)
    return jaxkmeans.KMeans(k, model_dir=tmp_path / name, **kw)


def initial_centers(tmp_path, input_fn, name="init", k=K, **kw):
    """The centers initialization picks: mini-batch with a working copy that never
    syncs, so after one step the published centers are still the initial ones."""
    kw.setdefault("seed", 0)
    km = jaxkmeans.KMeans(
        k,
        model_dir=tmp_path / name,
        use_mini_batch=True,
        mini_batch_steps_per_iteration=NEVER,
        **kw,
    )
    km.train(input_fn, steps=1)
    return km.cluster_centers()


def dir_digest(path):
    """Relative path -> SHA-256 of every file (and None for directories) under path."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else None
        for p in sorted(path.rglob("*"))
    }


def step_dirs(model_dir):
    return sorted(int(p.name) for p in pathlib.Path(model_dir).iterdir() if p.name.isdigit())


def min_dists(x, centers, metric="squared_euclidean"):
    x = np.asarray(x, np.float64)
    c = np.asarray(centers, np.float64)
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        return (1.0 - xn @ cn.T).min(axis=1)
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).min(axis=1)


# ------------------------------------------------------------------ TF 2.15 parity


def _scenarios():
    data = json.loads(REFERENCE.read_text())
    points = np.asarray(data["points"], np.float32)
    return [pytest.param(points, sc, id=f"{sc['name']}-{sc['steps']}") for sc in data["scenarios"]]


@pytest.mark.parametrize("points, sc", _scenarios())
def test_tf215_fullbatch_parity(tmp_path, points, sc):
    metric = sc["params"].get("distance_metric", "squared_euclidean")
    assert sc["params"]["use_mini_batch"] is False
    km = jaxkmeans.KMeans(
        3,
        model_dir=tmp_path / "m",
        initial_clusters=np.asarray(sc["initial_clusters"], np.float32),
        use_mini_batch=False,
        distance_metric=metric,
    )
    for _ in range(sc["steps"]):
        km.train(lambda: points)
    assert km.global_step == sc["steps"]
    np.testing.assert_allclose(km.cluster_centers(), sc["cluster_centers"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(km.score(lambda: points), sc["score_full_data"], rtol=1e-5)
    assert list(km.predict_cluster_index(lambda: points)) == sc["cluster_index"]
    first5 = points[:5]
    all_d = np.stack([p["all_distances"] for p in km.predict(lambda: first5)])
    assert all_d.dtype == np.float32 and all_d.shape == (5, 3)
    np.testing.assert_allclose(all_d, sc["all_distances_first5"], rtol=1e-5, atol=2e-5)
    transform = np.stack(list(km.transform(lambda: first5)))
    np.testing.assert_allclose(transform, sc["transform_first5"], rtol=1e-5, atol=2e-5)
    if metric == "squared_euclidean":
        np.testing.assert_allclose(transform, np.sqrt(all_d), rtol=1e-6)
    else:
        np.testing.assert_allclose(transform, all_d, rtol=1e-6)
    # TF's variable names that we keep.
    names = km.get_variable_names()
    assert {"clusters", "global_step"} <= set(names)


# ------------------------------------------------------------------ full batch


def test_each_train_call_is_one_lloyd_step(tmp_path):
    km = make(tmp_path)
    centers = jnp.asarray(INIT)
    for step in (1, 2, 3):
        km.train(lambda: X)
        expected, stats = jaxkmeans.lloyd_step(X, centers)
        assert km.global_step == step
        np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(km.get_variable_value("cluster_counts"), stats.counts)
        np.testing.assert_allclose(km.get_variable_value("loss"), stats.loss, rtol=1e-5)
        centers = jnp.asarray(km.cluster_centers())


def test_full_batch_over_several_batches_is_one_lloyd_step_on_all_rows(tmp_path):
    uneven = [X[:7], X[7:32], X[32:33], X[33:]]
    km = make(tmp_path)
    km.train(uneven)
    expected, stats = jaxkmeans.lloyd_step(X, INIT)
    assert km.global_step == 1
    np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-6)
    counts = km.get_variable_value("cluster_counts")
    np.testing.assert_array_equal(counts, stats.counts)
    assert counts.sum() == 60
    np.testing.assert_allclose(km.get_variable_value("loss"), stats.loss, rtol=1e-5)
    # Two steps over batches == two Lloyd steps on all rows.
    km.train(uneven)
    expected, _ = jaxkmeans.lloyd_step(X, expected)
    np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-6)


def test_steps_and_max_steps(tmp_path):
    calls = []

    def input_fn():
        calls.append(1)
        return BATCHES

    km = make(tmp_path)
    km.train(input_fn)  # neither: one pass = one step
    assert km.global_step == 1 and len(calls) == 1
    km.train(input_fn, steps=3)  # relative; input_fn called again for every pass
    assert km.global_step == 4 and len(calls) == 4
    km.train(input_fn, max_steps=6)  # absolute
    assert km.global_step == 6
    centers = km.cluster_centers()
    checkpoint = km.latest_checkpoint()
    digest = dir_digest(km.model_dir)
    n_calls = len(calls)
    for done in (6, 3, 1):  # already reached: nothing happens, nothing is read or written
        km.train(input_fn, max_steps=done)
    assert km.global_step == 6 and len(calls) == n_calls
    np.testing.assert_array_equal(km.cluster_centers(), centers)
    assert km.latest_checkpoint() == checkpoint and dir_digest(km.model_dir) == digest
    with pytest.raises(ValueError, match="not both"):
        km.train(input_fn, steps=1, max_steps=10)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="steps"):
            km.train(input_fn, steps=bad)
        with pytest.raises(ValueError, match="max_steps"):
            km.train(input_fn, max_steps=bad)
    with pytest.raises(TypeError, match="steps"):
        km.train(input_fn, steps=1.5)
    assert km.global_step == 6 and dir_digest(km.model_dir) == digest


def test_mini_batch_steps_and_epochs(tmp_path):
    km = make(tmp_path, use_mini_batch=True)
    km.train(BATCHES)  # neither: one epoch = one step per batch
    assert km.global_step == 3
    km.train(BATCHES, steps=5)  # more than a pass: the input is read again
    assert km.global_step == 8
    km.train(BATCHES, max_steps=10)
    assert km.global_step == 10
    km.train(X)  # one batch: one step
    assert km.global_step == 11


def _relative_changes(losses):
    return [abs(p - q) / (1 + abs(p)) for p, q in zip(losses, losses[1:], strict=False)]


def test_relative_tolerance_stops_full_batch(tmp_path):
    tol = 1e-3
    km = make(tmp_path, relative_tolerance=tol)
    km.train(X, steps=50)
    n = km.global_step
    assert 2 <= n < 50
    losses = [loss for _, loss in km.loss_history]
    assert len(losses) == n
    changes = _relative_changes(losses)
    assert changes[-1] < tol and all(c >= tol for c in changes[:-1])
    # The losses are the passes' losses before their updates: replay with lloyd_step.
    c = jnp.asarray(INIT)
    for loss in losses:
        c, stats = jaxkmeans.lloyd_step(X, c)
        np.testing.assert_allclose(loss, stats.loss, rtol=1e-5)
    np.testing.assert_allclose(km.cluster_centers(), c, rtol=1e-5, atol=1e-6)
    # max_steps and a tolerance: until the rule stops it (same stopping point).
    km2 = make(tmp_path, "m2", relative_tolerance=tol)
    km2.train(BATCHES, max_steps=1000)
    assert km2.global_step == n
    # (The frame origin is the mean of the first batch: float32 rounding differs.)
    np.testing.assert_allclose(km2.cluster_centers(), km.cluster_centers(), rtol=1e-6, atol=1e-6)
    # Already converged: the next call stops after one more step.
    km2.train(BATCHES, max_steps=1000)
    assert km2.global_step == n + 1


def test_relative_tolerance_only_stops_earlier(tmp_path):
    # Issue 14: neither steps nor max_steps is one pass, with or without a tolerance, so
    # the loop of one-step train() calls behaves the same (no "delta: 0" from call 2 on).
    with_tol = make(tmp_path, "tol", relative_tolerance=1e-3)
    without = make(tmp_path, "none")
    for i in range(1, 9):
        with_tol.train(BATCHES)
        without.train(BATCHES)
        assert with_tol.global_step == without.global_step == i
    np.testing.assert_array_equal(with_tol.cluster_centers(), without.cluster_centers())
    assert with_tol.loss_history == without.loss_history
    # Mini-batch: one epoch (3 batches) at most; a tolerance of 0 never stops it.
    mb = make(tmp_path, "mb", use_mini_batch=True, relative_tolerance=0.0)
    mb.train(BATCHES)
    assert mb.global_step == 3
    loose = make(tmp_path, "loose", use_mini_batch=True, relative_tolerance=10.0)
    loose.train(BATCHES)  # stops at the first step that has a previous loss
    assert loose.global_step < 3


def test_relative_tolerance_stops_mini_batch(tmp_path):
    tol = 1e-2
    km = make(tmp_path, use_mini_batch=True, relative_tolerance=tol)
    km.train(BATCHES, max_steps=10_000)  # until the rule stops it
    assert 2 <= km.global_step < 10_000
    smoothed = km.get_variable_value("smoothed_loss")
    prev = km.get_variable_value("prev_loss")
    assert abs(prev - smoothed) / (1 + abs(prev)) < tol
    capped = make(tmp_path, "capped", use_mini_batch=True, relative_tolerance=tol)
    capped.train(BATCHES, steps=1000)
    assert capped.global_step == km.global_step


def test_relative_tolerance_survives_a_restore(tmp_path):
    kw = dict(relative_tolerance=1e-2, use_mini_batch=True)
    ref = make(tmp_path, "ref", **kw)
    ref.train(BATCHES, max_steps=10_000)
    assert ref.global_step > 2
    km = make(tmp_path, **kw)
    km.train(BATCHES, steps=2)
    resumed = make(tmp_path, **kw)
    resumed.train(BATCHES, max_steps=10_000)
    assert resumed.global_step == ref.global_step
    np.testing.assert_array_equal(resumed.cluster_centers(), ref.cluster_centers())


def test_relative_tolerance_not_reached_runs_to_max_steps_without_a_warning(tmp_path):
    # Three different batches in turn: the smoothed loss keeps moving by more than 0.
    km = make(tmp_path, use_mini_batch=True, relative_tolerance=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        km.train(BATCHES, max_steps=40)
    assert km.global_step == 40
    assert np.isfinite(km.cluster_centers()).all()


# ------------------------------------------------------------------ mini-batch


def test_mini_batch_equals_minibatch_step_sequence(tmp_path):
    km = make(tmp_path, use_mini_batch=True)
    km.train(BATCHES, steps=7)
    state = jaxkmeans.KMeansState.create(INIT)
    for i in range(7):
        state, _ = jaxkmeans.minibatch_step(state, BATCHES[i % 3])
    assert km.global_step == 7 == int(state.step)
    np.testing.assert_allclose(km.cluster_centers(), state.centers, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(km.get_variable_value("cluster_counts"), state.counts)
    # Counts are cumulative from 0: every point of the 7 batches counted once.
    assert km.get_variable_value("cluster_counts").sum() == 7 * 20


def test_mini_batch_with_uneven_batches_equals_minibatch_step_sequence(tmp_path):
    # Batches smaller and larger than the first are padded internally with zero weight.
    uneven = [X[:20], X[20:27], X[27:60]]
    km = make(tmp_path, use_mini_batch=True)
    km.train(uneven, steps=5)
    state = jaxkmeans.KMeansState.create(INIT)
    for i in range(5):
        state, _ = jaxkmeans.minibatch_step(state, uneven[i % 3])
    np.testing.assert_allclose(km.cluster_centers(), state.centers, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(km.get_variable_value("cluster_counts"), state.counts)


def test_loss_history_is_bounded(tmp_path):
    km = make(tmp_path, use_mini_batch=True)
    km.train(SMALL, steps=2500)
    history = km.loss_history
    assert len(history) == 1000
    assert [s for s, _ in history] == list(range(1501, 2501))
    assert all(isinstance(v, float) and v >= 0 for _, v in history)
    assert make(tmp_path, use_mini_batch=True).loss_history == history


def test_mini_batch_steps_per_iteration_syncs_a_working_copy(tmp_path):
    s = 3
    km = make(tmp_path, use_mini_batch=True, mini_batch_steps_per_iteration=s)
    state = jaxkmeans.KMeansState.create(INIT)
    for step in range(1, 8):
        km.train(BATCHES, steps=1)  # consecutive calls continue through the batches
        state, _ = jaxkmeans.minibatch_step(state, BATCHES[(step - 1) % 3], steps_per_iteration=s)
        centers = km.cluster_centers()
        working = km.get_variable_value("working_clusters")
        counts = km.get_variable_value("cluster_counts")
        np.testing.assert_allclose(centers, state.centers, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(working, state.working, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(counts, state.counts)
        if step % s == 0:
            np.testing.assert_array_equal(centers, working)
            assert counts.sum() == 0  # counts restart at every sync
        else:
            assert counts.sum() == 20 * (step % s)
            if step < s:
                np.testing.assert_array_equal(centers, INIT)  # not published yet


def test_steps_per_iteration_equal_to_batches_is_a_full_batch_iteration(tmp_path):
    km = make(tmp_path, use_mini_batch=True, mini_batch_steps_per_iteration=3)
    km.train(BATCHES)
    expected, stats = jaxkmeans.lloyd_step(X, INIT)
    assert (np.asarray(stats.counts) > 0).all()
    np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-5)


def test_consecutive_train_calls_equal_one_call(tmp_path):
    one = make(tmp_path, "one", use_mini_batch=True)
    one.train(BATCHES, steps=8)
    split = make(tmp_path, "split", use_mini_batch=True)
    for n in (2, 1, 4, 1):
        split.train(BATCHES, steps=n)
    assert split.global_step == 8
    np.testing.assert_array_equal(split.cluster_centers(), one.cluster_centers())
    # A call that ends mid-pass, then "one pass": finishes that pass.
    split.train(BATCHES)
    assert split.global_step == 9
    split.train(BATCHES)
    assert split.global_step == 12


# ------------------------------------------------------------------ initialization

# 2-row batches: the first has fewer than k = 3 points, so initialization also reads the
# second (and only the second: four points are enough).
SMALL = [X[i : i + 2] for i in range(0, 60, 2)]
METHODS = ["random", "kmeans_plus_plus", "kmc2", "kmeans_parallel"]


@pytest.mark.parametrize("method", METHODS)
def test_init_methods(tmp_path, method):
    c0 = initial_centers(tmp_path, SMALL, initial_clusters=method)
    first_two = X[:4]
    assert all(np.equal(first_two, r).all(axis=1).any() for r in c0), c0  # data rows
    assert len({r.tobytes() for r in c0}) == K  # no duplicates
    # Same seed, same centers; the first pass still trains on every batch, those used
    # for initialization included (nothing is used up).
    km = make(tmp_path, initial_clusters=method)
    km.train(SMALL)
    assert km.get_variable_value("cluster_counts").sum() == 60
    expected, _ = jaxkmeans.lloyd_step(X, c0)
    np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-5)
    # Other seeds pick other centers.
    picks = {c0.tobytes()} | {
        initial_centers(tmp_path, SMALL, name=f"s{s}", initial_clusters=method, seed=s).tobytes()
        for s in (1, 2, 3)
    }
    assert len(picks) > 1
    # Mini-batch: every batch of the first epoch is a training step.
    mb = make(tmp_path, "mb", initial_clusters=method, use_mini_batch=True)
    mb.train(SMALL)
    assert mb.global_step == 30 and mb.get_variable_value("cluster_counts").sum() == 60


def test_random_init_never_picks_duplicate_centers(tmp_path):
    # Duplicated rows: still k distinct centers (read on until there are k distinct).
    dup = [np.stack([X[0], X[0]]), np.stack([X[0], X[1]]), np.stack([X[1], X[2]])] + SMALL
    for seed in range(3):
        c0 = initial_centers(tmp_path, dup, name=f"d{seed}", initial_clusters="random", seed=seed)
        assert sorted(map(tuple, c0)) == sorted(map(tuple, X[:3]))


def test_kmeans_plus_plus_spreads_over_blobs(tmp_path):
    for seed in range(3):
        c0 = initial_centers(
            tmp_path, BATCHES, name=f"s{seed}", initial_clusters="kmeans_plus_plus", seed=seed
        )
        blobs = {(round(r[0] / 8), round(r[1] / 8)) for r in c0}
        assert len(blobs) == 3, c0
        # Sampled from the first batch only: it has enough points.
        assert all(np.equal(BATCHES[0], r).all(axis=1).any() for r in c0)


def test_array_init(tmp_path):
    km = make(tmp_path, initial_clusters=INIT.tolist())
    km.train(X)
    expected, _ = jaxkmeans.lloyd_step(X, INIT)
    np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(km.params["initial_clusters"], INIT)
    with pytest.raises(ValueError, match="rows"):
        make(tmp_path, "x", k=4, initial_clusters=INIT)
    with pytest.raises(ValueError, match="distinct"):
        make(tmp_path, "x", initial_clusters=np.stack([INIT[0], INIT[0], INIT[1]]))
    with pytest.raises(ValueError, match="finite"):
        make(tmp_path, "x", initial_clusters=np.where(INIT == INIT[0, 0], np.nan, INIT))
    bad_dims = make(tmp_path, "x", initial_clusters=np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="columns"):
        bad_dims.train(X)
    assert bad_dims.global_step == 0 and not pathlib.Path(bad_dims.model_dir).exists()


def test_callable_init(tmp_path):
    calls = []

    def init(batch, k_remaining):
        calls.append((batch.shape, k_remaining))
        if len(calls) == 1:
            return np.zeros((0, 2))  # may return nothing
        if len(calls) == 2:
            return None  # ... also as None
        return batch[:k_remaining]

    c0 = initial_centers(tmp_path, SMALL, initial_clusters=init)
    assert calls == [((2, 2), 3), ((2, 2), 3), ((2, 2), 3), ((2, 2), 1)]
    np.testing.assert_array_equal(c0, X[[4, 5, 6]])
    assert make(tmp_path, "p", initial_clusters=init).params["initial_clusters"] is init

    km = make(tmp_path, "c", initial_clusters=lambda b, k: b[:k])  # X[0], X[1], then X[2]
    km.train(SMALL)
    assert km.get_variable_value("cluster_counts").sum() == 60  # nothing used up
    expected, _ = jaxkmeans.lloyd_step(X, INIT)
    np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-6)

    too_many = make(tmp_path, "t", initial_clusters=lambda b, k: np.repeat(b, 2, axis=0))
    with pytest.raises(ValueError, match="at most"):
        too_many.train(SMALL)
    too_few = make(tmp_path, "f", initial_clusters=lambda b, k: b[:0])
    with pytest.raises(ValueError, match="returned 0 rows"):
        too_few.train(SMALL)
    nan = make(tmp_path, "n", initial_clusters=lambda b, k: np.full((k, 2), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        nan.train(SMALL)
    for km in (too_many, too_few, nan):
        assert km.global_step == 0 and not pathlib.Path(km.model_dir).exists()


def test_too_few_distinct_points(tmp_path):
    km = make(tmp_path, k=4, initial_clusters="random")
    with pytest.raises(ValueError, match="distinct"):
        km.train(np.repeat(X[:3], 10, axis=0))
    assert not pathlib.Path(km.model_dir).exists()


# ------------------------------------------------------------------ cosine, empty clusters


@pytest.mark.parametrize("mini_batch", [False, True])
def test_cosine_is_spherical_in_both_modes(tmp_path, mini_batch):
    km = make(
        tmp_path,
        initial_clusters="kmeans_plus_plus",
        distance_metric="cosine",
        use_mini_batch=mini_batch,
    )
    shifted = [b * 7.0 + np.float32(0.5) for b in SMALL]  # norms far from 1
    for _ in range(3):
        km.train(shifted)
        np.testing.assert_allclose(np.linalg.norm(km.cluster_centers(), axis=1), 1.0, rtol=1e-5)
    all_x = np.concatenate(shifted)
    d = np.stack([p["all_distances"] for p in km.predict(all_x)])
    assert (d >= 0).all() and (d <= 2).all()
    np.testing.assert_allclose(
        d.min(axis=1), min_dists(all_x, km.cluster_centers(), "cosine"), atol=1e-5
    )
    np.testing.assert_allclose(np.stack(list(km.transform(all_x))), d, rtol=1e-6)
    # Scale does not matter for cosine.
    np.testing.assert_allclose(km.score(all_x), km.score(all_x * 3.0), rtol=1e-5)


def test_cosine_full_batch_equals_lloyd_step(tmp_path):
    init = np.array([[1.0, 0.1], [0.2, 1.0], [-1.0, -0.5]], np.float32)
    km = make(tmp_path, initial_clusters=init, distance_metric="cosine")
    km.train(BATCHES)
    expected, _ = jaxkmeans.lloyd_step(X, init, metric="cosine")
    np.testing.assert_allclose(km.cluster_centers(), expected, rtol=1e-5, atol=1e-6)


def test_empty_cluster_is_relocated_in_full_batch(tmp_path):
    init = np.concatenate([INIT[:2], [[100.0, 100.0]]]).astype(np.float32)
    km = make(tmp_path, initial_clusters=init)
    km.train(BATCHES)
    centers = km.cluster_centers()
    assert np.isfinite(centers).all()
    assert not (np.abs(centers) < 1e-6).all(axis=1).any()  # never the origin
    labels, dists = jaxkmeans.assign(X, init[:2])
    farthest = X[int(np.argmax(np.asarray(dists)))]
    np.testing.assert_allclose(centers[2], farthest, rtol=1e-6)
    expected, stats = jaxkmeans.lloyd_step(X, init)
    assert stats.counts[2] == 0
    np.testing.assert_allclose(centers, expected, rtol=1e-5, atol=1e-6)
    km.train(BATCHES, steps=3)
    assert (km.get_variable_value("cluster_counts") > 0).all()


def test_empty_cluster_in_mini_batch_stays_finite(tmp_path):
    init = np.concatenate([INIT[:2], [[100.0, 100.0]]]).astype(np.float32)
    km = make(tmp_path, initial_clusters=init, use_mini_batch=True)
    km.train(BATCHES, steps=4)
    centers = km.cluster_centers()
    assert np.isfinite(centers).all()
    assert not (np.abs(centers) < 1e-6).all(axis=1).any()
    assert np.isfinite(list(km.transform(X))).all()


# ------------------------------------------------------------------ seeds


@pytest.mark.parametrize("mini_batch", [False, True])
def test_same_seed_same_centers_bit_for_bit(tmp_path, mini_batch):
    runs = []
    for i in range(2):
        km = make(tmp_path, f"r{i}", initial_clusters="kmeans_plus_plus", use_mini_batch=mini_batch)
        km.train(BATCHES, steps=5)
        runs.append(km.cluster_centers())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_seed_none_is_drawn_once_and_stored(tmp_path):
    km = make(tmp_path, seed=None, initial_clusters="random")
    seed = km.params["seed"]
    assert isinstance(seed, int)
    km.train(SMALL)
    restored = make(tmp_path, seed=None, initial_clusters="random")
    assert restored.params["seed"] == seed
    np.testing.assert_array_equal(restored.cluster_centers(), km.cluster_centers())
    # The drawn seed reproduces the run.
    again = make(tmp_path, "again", seed=seed, initial_clusters="random")
    again.train(SMALL)
    np.testing.assert_array_equal(again.cluster_centers(), km.cluster_centers())


# ------------------------------------------------------------------ score, evaluate


def test_score_covers_all_input_and_global_step_counts_updates(tmp_path):
    km = make(tmp_path, use_mini_batch=True)
    km.train(BATCHES)
    assert km.global_step == 3  # updates applied; no extra step at end of input
    expected = min_dists(X, km.cluster_centers()).sum()
    np.testing.assert_allclose(km.score(BATCHES), expected, rtol=1e-5)
    np.testing.assert_allclose(km.score(X), expected, rtol=1e-5)
    np.testing.assert_allclose(
        km.score(BATCHES[:1]), min_dists(BATCHES[0], km.cluster_centers()).sum(), rtol=1e-5
    )
    assert isinstance(km.score(X), float)


def test_evaluate(tmp_path):
    km = make(tmp_path)
    km.train(BATCHES, steps=2)
    result = km.evaluate(BATCHES)
    assert set(result) == {"loss", "score", "global_step"}
    assert result["global_step"] == 2
    np.testing.assert_allclose(result["score"], km.score(X), rtol=1e-6)
    assert result["loss"] == result["score"]
    first = km.evaluate(BATCHES, steps=1, name="first")
    np.testing.assert_allclose(first["score"], km.score(BATCHES[0]), rtol=1e-6)
    km.train(BATCHES)
    km.evaluate(lambda: BATCHES)
    assert km.eval_dir() == os.path.join(km.model_dir, "eval")
    assert km.eval_dir("first") == os.path.join(km.model_dir, "eval_first")
    lines = pathlib.Path(km.eval_dir(), "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines] == [2, 3]
    assert json.loads(lines[0]) == result
    lines = pathlib.Path(km.eval_dir("first"), "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first]
    for bad in ("", "a/b", 3):
        with pytest.raises(ValueError, match="name"):
            km.evaluate(X, name=bad)
    with pytest.raises(ValueError, match="steps"):
        km.evaluate(X, steps=0)


# ------------------------------------------------------------------ not fitted, variables


def test_not_fitted(tmp_path):
    km = make(tmp_path)
    calls = {
        "predict": lambda: km.predict(X),
        "predict_cluster_index": lambda: km.predict_cluster_index(X),
        "transform": lambda: km.transform(X),
        "score": lambda: km.score(X),
        "evaluate": lambda: km.evaluate(X),
        "cluster_centers": km.cluster_centers,
        "get_variable_value": lambda: km.get_variable_value("clusters"),
        "get_variable_names": km.get_variable_names,
        "export_saved_model": lambda: km.export_saved_model(tmp_path / "export"),
    }
    for name, call in calls.items():
        with pytest.raises(jaxkmeans.NotFittedError, match="train") as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError), name
    assert issubclass(jaxkmeans.NotFittedError, ValueError)
    assert issubclass(jaxkmeans.NotFittedError, AttributeError)
    assert km.global_step == 0 and km.latest_checkpoint() is None
    assert not pathlib.Path(km.model_dir).exists() and not (tmp_path / "export").exists()
    with pytest.raises(ValueError):
        jaxkmeans.load_variable(km.model_dir, "clusters")


def test_params_model_fn_and_variables(tmp_path):
    config = jaxkmeans.RunConfig(save_checkpoints_steps=5, keep_checkpoint_max=2)
    km = make(
        tmp_path,
        use_mini_batch=True,
        mini_batch_steps_per_iteration=3,
        kmeans_plus_plus_num_retries=-1,
        relative_tolerance=1e-4,
        config=config,
        seed=3,
    )
    params = km.params
    assert params["num_clusters"] == K
    assert (
        params["distance_metric"]
        == "squared_euclidean"
        == jaxkmeans.KMeans.SQUARED_EUCLIDEAN_DISTANCE
    )
    assert params["seed"] == 3
    assert params["use_mini_batch"] is True
    assert params["mini_batch_steps_per_iteration"] == 3
    assert params["kmeans_plus_plus_num_retries"] == -1
    assert params["relative_tolerance"] == 1e-4
    assert params["feature_columns"] is None
    np.testing.assert_array_equal(params["initial_clusters"], INIT)
    assert km.config is config
    assert km.model_dir == str((tmp_path / "m").resolve())
    km.train(BATCHES, steps=4)

    names = km.get_variable_names()
    assert {"clusters", "global_step", "cluster_counts", "loss"} <= set(names)
    for name in names:
        value = km.get_variable_value(name)
        assert isinstance(value, np.ndarray)
        np.testing.assert_array_equal(value, jaxkmeans.load_variable(km.model_dir, name))
    np.testing.assert_array_equal(km.get_variable_value("clusters"), km.cluster_centers())
    assert int(km.get_variable_value("global_step")) == km.global_step == 4
    assert km.get_variable_value("cluster_counts").shape == (K,)
    assert km.get_variable_value("loss").shape == ()
    with pytest.raises(ValueError, match="name"):
        km.get_variable_value("nope")

    fn = jax.jit(km.model_fn)
    out = fn(jnp.asarray(km.cluster_centers()), jnp.asarray(X))
    assert set(out) == {"cluster_index", "all_distances"}
    preds = list(km.predict(X))
    np.testing.assert_array_equal(out["cluster_index"], [p["cluster_index"] for p in preds])
    np.testing.assert_allclose(
        out["all_distances"], np.stack([p["all_distances"] for p in preds]), rtol=1e-6
    )
    assert out["cluster_index"].dtype == jnp.int32
    # vmap over center sets composes too.
    both = jax.vmap(km.model_fn, in_axes=(0, None))(
        jnp.stack([km.cluster_centers(), INIT]), jnp.asarray(X)
    )
    assert both["all_distances"].shape == (2, 60, K)
    assert "KMeans(" in repr(km) and "global_step=4" in repr(km)


def test_constants():
    assert jaxkmeans.KMeans.COSINE_DISTANCE == jaxkmeans.COSINE_DISTANCE == "cosine"
    assert jaxkmeans.KMeans.RANDOM_INIT == "random"
    assert jaxkmeans.KMeans.KMEANS_PLUS_PLUS_INIT == "kmeans_plus_plus"
    assert jaxkmeans.KMeans.KMC2_INIT == "kmc2"
    assert jaxkmeans.KMeans.KMEANS_PARALLEL_INIT == "kmeans_parallel"
    assert jaxkmeans.KMeans.CLUSTER_CENTERS_VAR_NAME == jaxkmeans.CLUSTER_CENTERS_VAR_NAME
    assert (jaxkmeans.SCORE, jaxkmeans.CLUSTER_INDEX, jaxkmeans.ALL_DISTANCES) == (
        "score",
        "cluster_index",
        "all_distances",
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_clusters=0), ValueError, "num_clusters"),
        (dict(num_clusters=2.0), TypeError, "num_clusters"),
        (dict(distance_metric="manhattan"), ValueError, "distance_metric|metric"),
        (dict(initial_clusters="kmeans++"), ValueError, "initial_clusters"),
        (dict(initial_clusters=np.zeros(3)), TypeError, "initial_clusters"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed="a"), TypeError, "seed"),
        (dict(use_mini_batch="yes"), TypeError, "use_mini_batch"),
        (dict(mini_batch_steps_per_iteration=0), ValueError, "mini_batch_steps_per_iteration"),
        (dict(kmeans_plus_plus_num_retries=1.5), TypeError, "kmeans_plus_plus_num_retries"),
        (dict(relative_tolerance=-1.0), ValueError, "relative_tolerance"),
        (dict(relative_tolerance="x"), TypeError, "relative_tolerance"),
        (dict(config={}), TypeError, "config"),
        (dict(feature_columns="a"), TypeError, "feature_columns"),
    ],
)
def test_constructor_errors(tmp_path, kwargs, error, match):
    kwargs.setdefault("num_clusters", 3)
    with pytest.raises(error, match=match):
        jaxkmeans.KMeans(model_dir=tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_run_config_errors():
    for kw in (
        dict(save_checkpoints_steps=0),
        dict(keep_checkpoint_max=0),
        dict(save_checkpoints_steps=True),
    ):
        with pytest.raises(ValueError):
            jaxkmeans.RunConfig(**kw)
    with pytest.raises(TypeError, match="mesh"):
        jaxkmeans.RunConfig(mesh="cpu")


def test_model_dir_none_uses_a_temporary_directory():
    # Issue 14: made at the first save (with a warning naming it), not at construction.
    km = jaxkmeans.KMeans(3, initial_clusters=INIT, use_mini_batch=False, seed=0)
    try:
        assert not os.path.exists(km.model_dir)
        with pytest.warns(UserWarning, match="temporary directory"):
            km.train(X)
        assert os.path.isdir(km.model_dir)
        assert jaxkmeans.latest_checkpoint(km.model_dir) == km.latest_checkpoint()
    finally:
        shutil.rmtree(km.model_dir, ignore_errors=True)


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("mini_batch", [False, True])
def test_restore_continues_like_an_uninterrupted_run(tmp_path, mini_batch):
    kw = dict(initial_clusters="kmeans_plus_plus", use_mini_batch=mini_batch, seed=4)
    ref = make(tmp_path, "ref", **kw)
    ref.train(BATCHES, steps=7)

    km = make(tmp_path, **kw)
    km.train(BATCHES, steps=2)  # mid-pass in mini-batch mode
    restored = make(tmp_path, **kw)
    assert restored.global_step == 2
    np.testing.assert_array_equal(restored.cluster_centers(), km.cluster_centers())
    for name in km.get_variable_names():
        np.testing.assert_array_equal(
            restored.get_variable_value(name), km.get_variable_value(name), err_msg=name
        )
    restored.train(BATCHES, max_steps=5)
    again = make(tmp_path, **kw)  # and once more, from step 5
    again.train(BATCHES, steps=2)
    assert again.global_step == 7
    np.testing.assert_array_equal(again.cluster_centers(), ref.cluster_centers())
    assert again.loss_history == ref.loss_history
    # Restoring needs only k and the mode (issue 14: a different use_mini_batch is a
    # conflict; anything else that does not conflict is fine).
    bare = jaxkmeans.KMeans(K, model_dir=tmp_path / "m", use_mini_batch=mini_batch)
    assert bare.global_step == 7
    np.testing.assert_array_equal(bare.cluster_centers(), ref.cluster_centers())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(k=4),
        dict(distance_metric="cosine"),
        dict(initial_clusters=np.eye(3, 4, dtype=np.float32)),
    ],
    ids=["k", "metric", "dims"],
)
def test_incompatible_config_raises_before_writing(tmp_path, kwargs):
    km = make(tmp_path)
    km.train(X, steps=2)
    km.evaluate(X)
    before = dir_digest(km.model_dir)
    with pytest.raises(ValueError, match="does not fit|num_clusters|distance_metric|dims"):
        make(tmp_path, **kwargs)
    assert dir_digest(km.model_dir) == before
    # The original still restores.
    assert make(tmp_path).global_step == 2


def test_foreign_model_dir_is_rejected(tmp_path):
    from jaxkmeans.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "m") as ckpt:
        ckpt.save(1, {"w": np.zeros(3, np.float32)}, {"format": "something-else"})
    before = dir_digest(tmp_path / "m")
    with pytest.raises(ValueError, match="not written by"):
        make(tmp_path)
    assert dir_digest(tmp_path / "m") == before


@pytest.mark.parametrize("mini_batch", [False, True])
def test_failed_train_leaves_model_dir_and_model_unchanged(tmp_path, mini_batch):
    km = make(tmp_path, use_mini_batch=mini_batch)
    km.train(BATCHES, steps=2)
    km.evaluate(X)
    before = dir_digest(km.model_dir)
    values = {name: km.get_variable_value(name) for name in km.get_variable_names()}
    history = km.loss_history
    broken = {
        "nan": np.where(np.arange(20)[:, None] == 5, np.nan, BATCHES[2]).astype(np.float32),
        "inf": np.where(np.arange(20)[:, None] == 5, -np.inf, BATCHES[2]).astype(np.float32),
        "width": np.ones((20, 3), np.float32),
        "labels": (BATCHES[2], np.arange(20)),
    }
    for bad in broken.values():
        for steps in (None, 5):  # fails in the first pass, or in the second
            with pytest.raises(ValueError):
                km.train([BATCHES[0], BATCHES[1], bad], steps=steps)
            assert dir_digest(km.model_dir) == before
            assert km.global_step == 2 and km.loss_history == history
            for name, value in values.items():
                np.testing.assert_array_equal(km.get_variable_value(name), value, err_msg=name)
    # Still trains normally afterwards, exactly like a model that never saw the bad input.
    ref = make(tmp_path, "ref", use_mini_batch=mini_batch)
    ref.train(BATCHES, steps=4)
    km.train(BATCHES, steps=2)
    np.testing.assert_array_equal(km.cluster_centers(), ref.cluster_centers())
    # A fresh model whose very first train() fails writes nothing at all.
    fresh = make(tmp_path, "fresh", use_mini_batch=mini_batch)
    for bad in broken.values():
        with pytest.raises(ValueError):
            fresh.train([BATCHES[0], bad])
    assert not pathlib.Path(fresh.model_dir).exists() and fresh.global_step == 0
    with pytest.raises(jaxkmeans.NotFittedError):
        fresh.cluster_centers()


def test_failed_train_after_periodic_saves_keeps_memory_and_disk_consistent(tmp_path):
    config = jaxkmeans.RunConfig(save_checkpoints_steps=1, keep_checkpoint_max=None)
    km = make(tmp_path, use_mini_batch=True, config=config)
    km.train(BATCHES)
    bad = np.full((20, 2), np.nan, np.float32)
    with pytest.raises(ValueError):
        km.train([BATCHES[0], BATCHES[1], bad])  # two steps saved, then the failure
    # The model is the newest checkpoint: what a restore would give.
    restored = make(tmp_path, use_mini_batch=True)
    assert km.global_step == restored.global_step == 5
    for name in km.get_variable_names():
        np.testing.assert_array_equal(
            km.get_variable_value(name), restored.get_variable_value(name), err_msg=name
        )


def test_save_checkpoints_steps_and_keep_checkpoint_max(tmp_path):
    config = jaxkmeans.RunConfig(save_checkpoints_steps=2, keep_checkpoint_max=2)
    km = make(tmp_path, use_mini_batch=True, config=config)
    km.train(BATCHES, steps=5)  # saves at 2, 4 and at the end (5)
    assert step_dirs(km.model_dir) == [4, 5]
    km.train(BATCHES, steps=2)  # 6 and 7
    assert step_dirs(km.model_dir) == [6, 7]

    keep_all = jaxkmeans.RunConfig(save_checkpoints_steps=3, keep_checkpoint_max=None)
    km = make(tmp_path, "all", config=keep_all)
    km.train(X, steps=7)
    assert step_dirs(km.model_dir) == [3, 6, 7]

    default = make(tmp_path, "default")  # RunConfig(): at the end of train(), keep 5
    for _ in range(7):
        default.train(X)
    assert step_dirs(default.model_dir) == [3, 4, 5, 6, 7]
    assert default.config.keep_checkpoint_max == 5


def test_load_variable_list_variables_latest_checkpoint(tmp_path):
    km = make(tmp_path, use_mini_batch=True)
    km.train(BATCHES, steps=4)
    np.testing.assert_array_equal(
        jaxkmeans.load_variable(km.model_dir, jaxkmeans.CLUSTER_CENTERS_VAR_NAME),
        km.cluster_centers(),
    )
    assert int(jaxkmeans.load_variable(km.model_dir, "global_step")) == 4
    variables = dict(jaxkmeans.list_variables(km.model_dir))
    assert variables["clusters"] == [K, 2]
    assert variables["global_step"] == []
    assert variables["cluster_counts"] == [K]
    assert variables["loss"] == []
    assert sorted(variables) == km.get_variable_names()
    path = jaxkmeans.latest_checkpoint(km.model_dir)
    assert path == km.latest_checkpoint() == os.path.join(km.model_dir, "4")
    assert jaxkmeans.latest_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="name"):
        jaxkmeans.load_variable(km.model_dir, "nope")
    with pytest.raises(ValueError):
        jaxkmeans.list_variables(tmp_path / "nothing")


def _damage_newest(model_dir):
    newest = pathlib.Path(model_dir) / str(step_dirs(model_dir)[-1])
    files = [p for p in (newest / "state").rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    for i in range(len(data) // 2, len(data)):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))


def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    km = make(tmp_path, use_mini_batch=True)
    km.train(BATCHES, steps=2)
    at_2 = km.cluster_centers()
    km.train(BATCHES, steps=2)
    assert step_dirs(km.model_dir) == [2, 4]
    _damage_newest(km.model_dir)
    with pytest.warns(CheckpointWarning, match="damaged"):
        restored = make(tmp_path, use_mini_batch=True)
    assert restored.global_step == 2
    np.testing.assert_array_equal(restored.cluster_centers(), at_2)
    # Training on from the fallback matches an uninterrupted run.
    restored.train(BATCHES, steps=2)
    ref = make(tmp_path, "ref", use_mini_batch=True)
    ref.train(BATCHES, steps=4)
    np.testing.assert_array_equal(restored.cluster_centers(), ref.cluster_centers())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make(tmp_path, use_mini_batch=True).global_step == 4  # rewritten intact


# ------------------------------------------------------------------ SIGKILL and resume

KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jaxkmeans
    from jaxkmeans import checkpoint

    model_dir, kwargs = sys.argv[1], json.loads(sys.argv[2])
    save = checkpoint.Checkpointer.save

    def announcing_save(self, step, *args, **kw):
        save(self, step, *args, **kw)
        print("saved", step, flush=True)

    checkpoint.Checkpointer.save = announcing_save
    x = np.load(sys.argv[3])
    km = jaxkmeans.KMeans(
        model_dir=model_dir, config=jaxkmeans.RunConfig(save_checkpoints_steps=1), **kwargs
    )
    km.train(np.split(x, 3), max_steps=int(sys.argv[4]))
    print("done", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mini_batch", [True, False], ids=["mini_batch", "full_batch"])
def test_sigkill_and_resume_reaches_the_uninterrupted_centers(tmp_path, mini_batch):
    max_steps, kill_after = 100, 6
    kwargs = dict(
        num_clusters=K, initial_clusters="kmeans_plus_plus", use_mini_batch=mini_batch, seed=9
    )
    model_dir = tmp_path / "m"
    np.save(tmp_path / "x.npy", X)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            str(model_dir),
            json.dumps(kwargs),
            str(tmp_path / "x.npy"),
            str(max_steps),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(180, proc.kill)  # bounded time whatever happens
    watchdog.start()
    saved = []
    try:
        for line in proc.stdout:
            if line.startswith("saved"):
                saved.append(int(line.split()[1]))
                if saved[-1] >= kill_after:
                    time.sleep(0.01 * (saved[-1] % 3))
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            assert not line.startswith("done"), "the run finished before it was killed"
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert saved and saved[-1] >= kill_after, "the subprocess never reported a save"
    assert proc.returncode == -signal.SIGKILL

    resumed = jaxkmeans.KMeans(model_dir=model_dir, **kwargs)
    assert kill_after <= resumed.global_step < max_steps
    resumed.train(BATCHES, max_steps=max_steps)
    assert resumed.global_step == max_steps

    uninterrupted = jaxkmeans.KMeans(model_dir=tmp_path / "ref", **kwargs)
    uninterrupted.train(BATCHES, max_steps=max_steps)
    np.testing.assert_array_equal(resumed.cluster_centers(), uninterrupted.cluster_centers())
    for name in ("cluster_counts", "working_clusters", "global_step"):
        np.testing.assert_array_equal(
            resumed.get_variable_value(name), uninterrupted.get_variable_value(name)
        )
    assert math.isfinite(resumed.score(X))
