"""Tests for KMeans.export_saved_model / jaxkmeans.load_exported (jaxkmeans.export)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jaxkmeans

RNG = np.random.default_rng(0)
X = np.concatenate(
    [m + RNG.normal(size=(20, 2)) for m in ([0.0, 0.0], [8.0, 8.0], [0.0, 8.0])]
).astype(np.float32)[RNG.permutation(60)]
INIT = X[[0, 1, 2]].copy()
BATCHES = [X[0:20], X[20:40], X[40:60]]


def trained(tmp_path, metric="squared_euclidean", name="m"):
    km = jaxkmeans.KMeans(
        3,
        model_dir=tmp_path / name,
        initial_clusters=INIT,
        use_mini_batch=False,
        distance_metric=metric,
        seed=0,
    )
    km.train(BATCHES, steps=2)
    return km


def predicted(km, x):
    preds = list(km.predict(x))
    return (
        np.array([p["cluster_index"] for p in preds]),
        np.stack([p["all_distances"] for p in preds]),
    )


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_exported_outputs_equal_predict(tmp_path, metric):
    km = trained(tmp_path, metric)
    path = km.export_saved_model(tmp_path / "export")
    assert pathlib.Path(path).parent == (tmp_path / "export").resolve()
    model = jaxkmeans.load_exported(path)
    for n in (1, 5, 7, 60):  # the batch dimension is symbolic: any size works
        x = X[:n]
        out = model(x)
        assert set(out) == {"cluster_index", "all_distances"}
        assert out["cluster_index"].shape == (n,) and out["cluster_index"].dtype == np.int32
        assert out["all_distances"].shape == (n, 3) and out["all_distances"].dtype == np.float32
        index, dist = predicted(km, x)
        np.testing.assert_array_equal(out["cluster_index"], index)
        # Equal up to float32 rounding (the export folds the centers in as constants).
        np.testing.assert_allclose(out["all_distances"], dist, rtol=1e-5, atol=5e-5)
    # float64 / int input is accepted and cast.
    np.testing.assert_array_equal(model(X.astype(np.float64))["cluster_index"], predicted(km, X)[0])


def test_metadata(tmp_path):
    km = trained(tmp_path)
    path = pathlib.Path(km.export_saved_model(tmp_path / "export"))
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["format"] == "jaxkmeans-export"
    assert meta["num_clusters"] == 3 and meta["dims"] == 2
    assert meta["distance_metric"] == "squared_euclidean"
    assert meta["global_step"] == 2
    assert meta["outputs"] == ["cluster_index", "all_distances"]
    assert "cpu" in meta["platforms"]
    model = jaxkmeans.load_exported(path)
    assert model.metadata == meta
    assert model.num_clusters == 3 and model.dims == 2
    assert "ExportedModel(" in repr(model)
    # Written aside and renamed: no temporary directories are left behind.
    assert [p.name for p in (tmp_path / "export").iterdir()] == [path.name]


def test_each_export_is_a_new_directory_and_the_parent_loads_the_newest(tmp_path):
    km = trained(tmp_path)
    first = km.export_saved_model(tmp_path / "export")
    km.train(BATCHES)
    second = km.export_saved_model(tmp_path / "export")
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert int(pathlib.Path(second).name) > int(pathlib.Path(first).name)
    newest = jaxkmeans.load_exported(tmp_path / "export")
    assert newest.path == second and newest.metadata["global_step"] == 3
    assert jaxkmeans.load_exported(first).metadata["global_step"] == 2


def test_load_errors(tmp_path):
    km = trained(tmp_path)
    model = jaxkmeans.load_exported(km.export_saved_model(tmp_path / "export"))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        model(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        model(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="numeric"):
        model(np.array([["a", "b"]]))
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing", km.model_dir):
        with pytest.raises(ValueError, match="export_saved_model"):
            jaxkmeans.load_exported(bad)


def _features(x):
    return {"b": x[:, 1], "a": x[:, :1], "unused": np.zeros(len(x), np.float32)}


@pytest.mark.parametrize("columns", [None, ["b", "a"]], ids=["sorted", "feature_columns"])
def test_dict_trained_model_exports_a_predictor_of_the_same_dict(tmp_path, columns):
    # Issue 14: the exported predictor rejected the training dict ("got dtype object").
    feats = {"b": X[:, 1], "a": X[:, :1]} if columns is None else _features(X)
    km = jaxkmeans.KMeans(
        3, model_dir=tmp_path / "m", use_mini_batch=False, seed=0, feature_columns=columns
    )
    km.train(feats, steps=2)
    expected = [p["cluster_index"] for p in km.predict(feats)]
    path = km.export_saved_model(tmp_path / "export")
    order = ["a", "b"] if columns is None else ["b", "a"]
    meta = json.loads((pathlib.Path(path) / "metadata.json").read_text())
    assert meta["features"] == [[name, 1] for name in order]
    model = jaxkmeans.load_exported(path)
    assert model.feature_names == order
    # The dict (keys in any order, extra keys ignored), (dict, None), or the array.
    np.testing.assert_array_equal(model(_features(X))["cluster_index"], expected)
    np.testing.assert_array_equal(model((_features(X), None))["cluster_index"], expected)
    matrix = np.stack([X[:, 0] if name == "a" else X[:, 1] for name in order], axis=1)
    np.testing.assert_array_equal(model(matrix)["cluster_index"], expected)
    with pytest.raises(ValueError, match="'a'.*missing"):
        model({"b": X[:, 1]})
    with pytest.raises(ValueError, match="feature 'a' must have 1 column"):
        model({"a": X, "b": X[:, 1]})
    # Restored from the checkpoint, the model still knows its features.
    restored = jaxkmeans.KMeans(
        3, model_dir=tmp_path / "m", use_mini_batch=False, feature_columns=columns
    )
    again = jaxkmeans.load_exported(restored.export_saved_model(tmp_path / "export2"))
    assert again.feature_names == order


def test_array_trained_export_rejects_a_dict_clearly(tmp_path):
    model = jaxkmeans.load_exported(trained(tmp_path).export_saved_model(tmp_path / "export"))
    assert model.feature_names is None
    with pytest.raises(TypeError, match="trained on arrays"):
        model({"a": X[:, 0], "b": X[:, 1]})


def test_export_takes_tf_arguments(tmp_path):
    km = trained(tmp_path)
    first = km.latest_checkpoint()
    centers = km.cluster_centers()
    km.train(BATCHES, steps=2)
    (tmp_path / "vocab.txt").write_text("hello")
    path = km.export_saved_model(
        tmp_path / "export",
        lambda: None,  # serving_input_receiver_fn: ignored
        assets_extra={"sub/vocab.txt": tmp_path / "vocab.txt"},
        checkpoint_path=first,
    )
    assert (pathlib.Path(path) / "assets.extra/sub/vocab.txt").read_text() == "hello"
    model = jaxkmeans.load_exported(path)
    assert model.metadata["global_step"] == 2
    d = ((X[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(model(X)["cluster_index"], d.argmin(1))
    with pytest.warns(UserWarning, match="as_text"):
        km.export_saved_model(tmp_path / "export", as_text=True)
    with pytest.raises(ValueError, match="assets_extra"):
        km.export_saved_model(tmp_path / "export", assets_extra={"../x": tmp_path / "vocab.txt"})


def test_export_before_training_writes_nothing(tmp_path):
    km = jaxkmeans.KMeans(3, model_dir=tmp_path / "m")
    with pytest.raises(jaxkmeans.NotFittedError):
        km.export_saved_model(tmp_path / "export")
    assert not (tmp_path / "export").exists()


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jaxkmeans

    path, data = sys.argv[1], sys.argv[2]
    model = jaxkmeans.load_exported(path)
    x = np.load(data)
    results = {}
    for n in (1, 3, 60):
        out = model(x[:n])
        results[n] = {k: v.tolist() for k, v in out.items()}
    print(json.dumps({"metadata": model.metadata, "results": results}))
    """
)


def test_export_loads_in_a_fresh_process_without_the_model_dir(tmp_path):
    km = trained(tmp_path)
    index, dist = predicted(km, X)
    path = km.export_saved_model(tmp_path / "export")
    shutil.rmtree(km.model_dir)
    np.save(tmp_path / "x.npy", X)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, path, str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["metadata"]["num_clusters"] == 3
    for n, out in got["results"].items():
        n = int(n)
        np.testing.assert_array_equal(out["cluster_index"], index[:n])
        np.testing.assert_allclose(out["all_distances"], dist[:n], rtol=1e-5, atol=5e-5)
