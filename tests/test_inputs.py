"""Tests for jaxkmeans.inputs and for every input form through every KMeans method.

Every accepted form (array, dict, ``(features, None)``, iterables of batches, callables
returning any of those, the objects passed directly) must give the same model and the
same outputs as a plain (n, d) array; everything else must raise a clear
TypeError/ValueError before anything is trained or written.
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans.inputs import InputReader, feature_names, to_matrix

RNG = np.random.default_rng(0)
# 60 points in 3 blobs, 2-D, float32; the columns are named "a" and "b" in dict forms.
X = np.concatenate(
    [m + RNG.normal(size=(20, 2)) for m in ([0.0, 0.0], [8.0, 8.0], [0.0, 8.0])]
).astype(np.float32)[RNG.permutation(60)]
INIT = X[[0, 1, 2]].copy()
BATCHES = [X[0:20], X[20:40], X[40:60]]
K = 3


def make(tmp_path, name="m", **kw):
    kw.setdefault("initial_clusters", INIT)
    kw.setdefault("use_mini_batch", False)
    kw.setdefault("seed", 0)
    return jaxkmeans.KMeans(K, model_dir=tmp_path / name, **kw)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The model trained for 2 steps on the plain (60, 2) array, and its outputs."""
    km = make(tmp_path_factory.mktemp("reference"))
    km.train(lambda: X, steps=2)
    return km, outputs(km, lambda: X)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for one step (tests must not change it)."""
    km = make(tmp_path_factory.mktemp("trained"))
    km.train(X)
    return km


def outputs(km, source):
    """Every inference method on `source` (a fresh source each time)."""
    preds = list(km.predict(source()))
    return {
        "index": np.array(list(km.predict_cluster_index(source()))),
        "pred_index": np.array([p["cluster_index"] for p in preds]),
        "all_distances": np.stack([p["all_distances"] for p in preds]),
        "transform": np.stack(list(km.transform(source()))),
        "score": km.score(source()),
        "evaluate": km.evaluate(source())["score"],
    }


def assert_outputs_close(a, b):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["pred_index"], b["pred_index"])
    # Each batch is predicted in its own frame: float32 rounding of the distance
    # expansion at these magnitudes (||x - origin||^2 ~ 50) is ~1e-5 absolute.
    np.testing.assert_allclose(a["all_distances"], b["all_distances"], rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(a["transform"], b["transform"], rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5)
    np.testing.assert_allclose(a["evaluate"], b["evaluate"], rtol=1e-5)


# ---------------------------------------------------------------- unit: the reader


def read(obj, **kw):
    return [b for b in InputReader(obj, **kw).batches()]


def test_array_forms_are_float32_batches():
    for obj in (X, jnp.asarray(X), X.tolist(), X.astype(np.float64), X.astype(np.int64)):
        (batch,) = read(obj)
        assert batch.dtype == np.float32 and batch.shape == (60, 2)
        np.testing.assert_allclose(batch, np.asarray(obj, np.float32))


def test_dict_columns_sorted_by_key_and_1d_values_are_columns():
    feats = {"b": X[:, 1], "a": X[:, 0], "c": X}
    (batch,) = read(feats)
    np.testing.assert_array_equal(batch, np.column_stack([X[:, 0], X[:, 1], X]))


def test_feature_columns_order_and_select():
    feats = {"b": X[:, 1], "a": X[:, 0], "c": X}
    (batch,) = read(feats, feature_columns=["b", "a"])
    np.testing.assert_array_equal(batch, X[:, ::-1])
    (batch,) = read(feats, feature_columns=["c"])
    np.testing.assert_array_equal(batch, X)

    class Column:  # TF feature columns are accepted through their `key`
        def __init__(self, key):
            self.key = key

    assert feature_names([Column("a"), "b"]) == ["a", "b"]


def test_pairs_with_none_labels():
    (batch,) = read((X, None))
    np.testing.assert_array_equal(batch, X)
    (batch,) = read(({"a": X[:, 0], "b": X[:, 1]}, None))
    np.testing.assert_array_equal(batch, X)
    got = read([(b, None) for b in BATCHES])
    np.testing.assert_array_equal(np.concatenate(got), X)


def test_iterables_of_batches():
    for obj in (BATCHES, tuple(BATCHES), iter(BATCHES), (b for b in BATCHES)):
        got = read(obj)
        assert [b.shape for b in got] == [(20, 2)] * 3
        np.testing.assert_array_equal(np.concatenate(got), X)
    got = read([{"a": b[:, 0], "b": b[:, 1]} for b in BATCHES])
    np.testing.assert_array_equal(np.concatenate(got), X)


def test_callables_are_called_once_per_pass():
    calls = []

    def input_fn():
        calls.append(1)
        return BATCHES

    reader = InputReader(input_fn)
    for _ in range(3):
        assert len(list(reader.batches())) == 3
    assert len(calls) == 3


def test_generator_function_gives_a_fresh_pass_each_time():
    def gen():
        yield from BATCHES

    reader = InputReader(gen)
    for _ in range(2):
        np.testing.assert_array_equal(np.concatenate(list(reader.batches())), X)


def test_one_shot_iterator_allows_one_pass():
    it = iter(BATCHES)
    reader = InputReader(it)
    assert len(list(reader.batches())) == 3
    with pytest.raises(ValueError, match="one-shot"):
        list(reader.batches())


def test_empty_batches_are_skipped():
    got = read([X[:0], X[:5], np.zeros((0, 2), np.float32)])
    assert [b.shape for b in got] == [(5, 2)]


def test_dims_are_checked_against_the_expected_width():
    with pytest.raises(ValueError, match="3 features"):
        read(X, dims=3)


LABELS = np.arange(60)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (None, TypeError, "None"),
        ("points.csv", TypeError, "points.csv"),
        (b"bytes", TypeError, "bytes"),
        (5, TypeError, "int"),
        (object(), TypeError, "object"),
        (lambda: None, TypeError, "NoneType"),
        (lambda: "abc", TypeError, "string"),
        (lambda required: X, TypeError, "no arguments"),
        ((X, LABELS), ValueError, "labels"),
        (({"a": X[:, 0]}, LABELS), ValueError, "labels"),
        ((X, list(range(60))), ValueError, "labels"),
        ([(X, LABELS)], ValueError, "labels"),
        ([[1.0, 2.0], [3.0]], ValueError, "ragged|inhomogeneous|convert"),
        ([X, X[:, :1]], ValueError, "2 features"),
        ({"a": X[:, 0], "b": X[:10, 1]}, ValueError, "same number of rows"),
        (X[:, 0], ValueError, "2-D"),
        (X[None], ValueError, "2-D"),
        (np.array([[1.0, np.nan]], np.float32), ValueError, "finite"),
        (np.array([[1.0, np.inf]], np.float32), ValueError, "finite"),
        (np.array([["a", "b"]]), TypeError, "numeric"),
        ({"a": np.array(["x", "y"])}, TypeError, "numeric"),
        ({}, ValueError, "empty"),
    ],
    ids=lambda v: None,
)
def test_bad_inputs_raise_clear_errors(bad, error, match):
    with pytest.raises(error, match=match):
        read(bad)


def test_feature_columns_errors():
    with pytest.raises(ValueError, match="missing"):
        read({"a": X[:, 0]}, feature_columns=["a", "zz"])
    with pytest.raises(ValueError, match="dict"):
        read(X, feature_columns=["a"])
    with pytest.raises(TypeError):
        feature_names("a")
    with pytest.raises(ValueError, match="repeat"):
        feature_names(["a", "a"])
    with pytest.raises(ValueError, match="at least one"):
        feature_names([])


def test_to_matrix_one_batch():
    np.testing.assert_array_equal(to_matrix({"b": X[:, 1], "a": X[:, 0]}), X)
    with pytest.raises(ValueError, match="labels"):
        to_matrix((X, X))


# ---------------------------------------------------- end to end: every method, every form


def forms():
    """name -> zero-argument factory of a fresh source equivalent to X."""
    as_dict = {"b": X[:, 1], "a": X[:, 0]}
    dict_batches = [{"a": b[:, 0], "b": b[:, 1]} for b in BATCHES]

    def gen():
        yield from BATCHES

    return {
        "array": lambda: X,
        "array_callable": lambda: lambda: X,
        "jax_array": lambda: jnp.asarray(X),
        "dict": lambda: as_dict,
        "dict_callable": lambda: lambda: as_dict,
        "pair": lambda: (X, None),
        "pair_callable": lambda: lambda: (as_dict, None),
        "batch_list": lambda: BATCHES,
        "batch_list_callable": lambda: lambda: BATCHES,
        "dict_batches": lambda: dict_batches,
        "pair_batches": lambda: [(b, None) for b in BATCHES],
        "generator_function": lambda: gen,
    }


@pytest.mark.parametrize("form", list(forms()))
def test_every_input_form_trains_and_predicts_like_an_array(tmp_path, ref, form):
    ref, expected = ref
    source = forms()[form]
    km = make(tmp_path)
    km.train(source(), steps=2)
    assert km.global_step == 2
    np.testing.assert_allclose(km.cluster_centers(), ref.cluster_centers(), rtol=1e-5, atol=1e-6)
    assert_outputs_close(outputs(km, source), expected)
    counts = km.get_variable_value("cluster_counts")
    assert counts.sum() == 60


def test_dict_feature_columns_select_and_order_end_to_end(tmp_path, ref):
    ref, expected = ref
    # Columns named so that sorted order would be wrong; an extra column must be ignored.
    feats = {"x2": X[:, 1], "x1": X[:, 0], "junk": np.full(60, 1e6, np.float32)}
    km = make(tmp_path, feature_columns=["x1", "x2"])
    km.train(lambda: feats, steps=2)
    np.testing.assert_allclose(km.cluster_centers(), ref.cluster_centers(), rtol=1e-5, atol=1e-6)
    assert_outputs_close(outputs(km, lambda: feats), expected)
    assert km.params["feature_columns"] == ["x1", "x2"]
    with pytest.raises(ValueError, match="dict"):
        km.score(X)


def test_dict_of_multi_column_and_1d_features(tmp_path, ref):
    # "a" (n, 1 as 1-D) then "b" (n, 1 as 2-D): sorted order gives X's columns.
    feats = {"b": X[:, 1:], "a": X[:, 0]}
    ref, _ = ref
    km = make(tmp_path)
    km.train(feats, steps=2)
    np.testing.assert_allclose(km.cluster_centers(), ref.cluster_centers(), rtol=1e-5, atol=1e-6)


def test_one_shot_iterator_passed_directly_allows_one_pass(tmp_path):
    ref = make(tmp_path, "ref")
    ref.train(BATCHES)
    km = make(tmp_path)
    km.train(iter(BATCHES))  # one full-batch step = one pass: fine
    np.testing.assert_allclose(km.cluster_centers(), ref.cluster_centers(), rtol=1e-6)
    before = km.cluster_centers()
    # Two passes from one iterator: ValueError, nothing changes.
    with pytest.raises(ValueError, match="one-shot"):
        km.train(iter(BATCHES), steps=2)
    assert km.global_step == 1
    np.testing.assert_array_equal(km.cluster_centers(), before)
    # Mini-batch: more steps than batches needs a second pass.
    mb = make(tmp_path, "mb", use_mini_batch=True)
    with pytest.raises(ValueError, match="one-shot"):
        mb.train(iter(BATCHES), steps=4)
    assert mb.global_step == 0
    mb.train(iter(BATCHES), steps=3)
    assert mb.global_step == 3
    # A generator object passed directly is a one-shot iterator too.
    with pytest.raises(ValueError, match="one-shot"):
        mb.train((b for b in BATCHES), steps=4)


def test_an_exhausted_iterator_is_not_silently_scored_as_zero(tmp_path):
    km = make(tmp_path)
    it = iter(BATCHES)
    km.train(it)
    with pytest.raises(ValueError, match="empty"):
        km.score(it)
    with pytest.raises(ValueError, match="empty"):
        km.evaluate(iter([]))
    with pytest.raises(ValueError, match="empty"):
        km.train(lambda: iter([]))


@pytest.mark.parametrize(
    "bad, error",
    [
        (None, TypeError),
        ("data.npy", TypeError),
        (lambda: None, TypeError),
        ((X, LABELS), ValueError),
        ([(X, LABELS)], ValueError),
        ([[1.0, 2.0], [3.0]], ValueError),
        ([BATCHES[0], BATCHES[1][:, :1]], ValueError),
        (X[:, 0], ValueError),
        (np.where(np.arange(60)[:, None] == 7, np.nan, X), ValueError),
    ],
    ids=[
        "none",
        "string",
        "returns_none",
        "labels",
        "labels_in_batches",
        "ragged",
        "widths",
        "1d",
        "nan",
    ],
)
def test_bad_input_errors_in_every_method(tmp_path, trained, bad, error):
    fresh = make(tmp_path)
    with pytest.raises(error):
        fresh.train(bad)
    assert fresh.global_step == 0 and fresh.latest_checkpoint() is None
    assert not pathlib.Path(fresh.model_dir).exists()
    km = trained
    for method in (km.score, km.evaluate):
        with pytest.raises(error):
            method(bad)
    for method in (km.predict, km.predict_cluster_index, km.transform):
        with pytest.raises(error):
            list(method(bad))
    with pytest.raises(error):
        km.train(bad)
    assert km.global_step == 1
    # evaluate() logged nothing for the bad inputs.
    assert not pathlib.Path(km.eval_dir(), "metrics.jsonl").exists()


def test_wrong_width_after_training_is_rejected(trained):
    km = trained
    wide = np.concatenate([X, X], axis=1)
    for method in (km.score, km.evaluate):
        with pytest.raises(ValueError, match="2 features"):
            method(wide)
    with pytest.raises(ValueError, match="2 features"):
        list(km.predict(wide))
    with pytest.raises(ValueError, match="2 features"):
        km.train(wide)


def test_predict_yield_single_examples_false_and_predict_keys(tmp_path):
    km = make(tmp_path)
    km.train(BATCHES)
    per_batch = list(km.predict(BATCHES, yield_single_examples=False))
    assert len(per_batch) == 3
    assert per_batch[0]["cluster_index"].shape == (20,)
    assert per_batch[0]["all_distances"].shape == (20, K)
    singles = list(km.predict(BATCHES, predict_keys="cluster_index"))
    assert len(singles) == 60 and set(singles[0]) == {"cluster_index"}
    assert isinstance(singles[0]["cluster_index"], int)
    np.testing.assert_array_equal(
        np.concatenate([b["cluster_index"] for b in per_batch]),
        [s["cluster_index"] for s in singles],
    )
    with pytest.raises(ValueError, match="predict_keys"):
        km.predict(X, predict_keys=["nope"])


def test_evaluate_log_lines_are_json(tmp_path):
    km = make(tmp_path)
    km.train(BATCHES)
    km.evaluate(BATCHES)
    km.evaluate(X, name="x")
    for name in (None, "x"):
        lines = pathlib.Path(km.eval_dir(name), "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1
        assert set(json.loads(lines[0])) == {"loss", "score", "global_step"}


def test_in_memory_inputs_are_checked_and_placed_once_per_train(tmp_path, monkeypatch):
    memmap = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, X.shape)
    memmap[:] = X
    assert InputReader(X).in_memory and InputReader(BATCHES).in_memory
    assert InputReader(tuple(BATCHES)).in_memory
    # Not held in memory (or not the same objects every pass): nothing is kept.
    for source in (memmap, np.array_split(memmap, 3), lambda: X, iter(BATCHES), X.tolist()):
        assert not InputReader(source).in_memory
    import jaxkmeans.estimator as est

    placed = []
    real = est._place
    monkeypatch.setattr(est, "_place", lambda *a: placed.append(1) or real(*a))
    # Placements that copy, as for padded batches or without the native kernel: unpadded
    # float32 batches are otherwise read in place, at no copy and never kept
    # (tests/test_in_place.py).
    monkeypatch.setattr(est.kernels, "reads_in_place", lambda spec: False)
    # A callable returning the same arrays: placed once too (a placement lives as long
    # as its batch object); new objects every pass, or a memmap: placed every pass.
    fresh = lambda: [b.copy() for b in BATCHES]  # noqa: E731
    for source, per_train in ((BATCHES, 3), (lambda: BATCHES, 3), (fresh, 3 * 4), (memmap, 4)):
        placed.clear()
        km = make(tmp_path, f"m{len(str(per_train))}{id(source)}", use_mini_batch=False)
        km.train(source, steps=4)
        assert len(placed) == per_train, source
    # One batch enough for an init method: the initializer's placement of it is the
    # first pass's (no placement of its own), for an array or a callable returning it.
    rows = np.concatenate([X + 0.5 * i for i in range(5)])[:256]  # 256: its own size bucket
    for source in (rows, lambda: rows):
        placed.clear()
        km = make(tmp_path, f"i{id(source)}", initial_clusters="kmeans_plus_plus")
        km.train(source, steps=3)
        assert placed == [], source
        same = make(tmp_path, f"i{id(source)}b", initial_clusters="kmeans_plus_plus")
        same.train(lambda: rows.copy(), steps=3)  # new objects: placed every later pass
        assert len(placed) == 2
        np.testing.assert_array_equal(km.cluster_centers(), same.cluster_centers())
    # The same model either way.
    a = make(tmp_path, "a", use_mini_batch=False).train(BATCHES, steps=4)
    b = make(tmp_path, "b", use_mini_batch=False).train(lambda: BATCHES, steps=4)
    c = make(tmp_path, "c", use_mini_batch=False).train(fresh, steps=4)
    np.testing.assert_array_equal(a.cluster_centers(), b.cluster_centers())
    np.testing.assert_array_equal(a.cluster_centers(), c.cluster_centers())
    # A second pass skips the finiteness check of the same objects, not of new ones
    # (nor of a memmap, read from its file again), and not of an object that died.
    for source in (BATCHES, lambda: BATCHES):
        reader = InputReader(source)
        list(reader.batches())
        assert all(reader.seen_before(i, b) for i, b in enumerate(BATCHES))
        assert not reader.seen_before(0, BATCHES[0].copy())
    reader = InputReader(memmap)
    list(reader.batches())
    assert not reader.seen_before(0, memmap)
    reader = InputReader(fresh)
    first = list(reader.batches())
    assert reader.seen_before(0, first[0])
    del first
    assert not any(ref() is not None for ref in reader._checked.values())
