"""Make the gallery's pictures (committed under docs/gallery/images/).

    pip install -e ".[docs]" && python docs/gallery/make_gallery.py

Three examples, each a function that fits with jaxkmeans and writes one PNG:

* ``china``: colour quantization of scikit-learn's sample image ``china.jpg`` to 64
  colours with :func:`jaxkmeans.fit` on every pixel (before / after);
* ``digits``: :class:`jaxkmeans.sklearn.KMeans` with 10 clusters on the 8x8 digits of
  ``sklearn.datasets.load_digits``: the centers as images, and how the true digits fall
  into the clusters;
* ``streaming``: :class:`jaxkmeans.KMeans` trained full batch on a ``numpy.memmap`` read
  in slices by an ``input_fn``, next to a mini-batch model on the same rows; the loss per
  step and the final centers.

The figures show results (centers, losses, label agreement), never timings: measured
speed is in bench/RESULTS.md. Everything is seeded, so a rerun draws the same pictures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import jaxkmeans  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
IMAGES = HERE / "images"


def china(out: pathlib.Path) -> None:
    """Quantize china.jpg to 64 colours: fit on all pixels, assign every pixel."""
    from sklearn.datasets import load_sample_image

    image = load_sample_image("china.jpg")  # (427, 640, 3) uint8
    h, w, _ = image.shape
    pixels = image.reshape(-1, 3).astype(np.float32) / 255.0
    result = jaxkmeans.fit(jax.random.PRNGKey(0), pixels, 64, max_iter=100)
    labels, _ = jaxkmeans.assign(pixels, result.centers)
    palette = np.clip(np.asarray(result.centers), 0.0, 1.0)
    quantized = palette[np.asarray(labels)].reshape(h, w, 3)
    n_colours = len(np.unique(image.reshape(-1, 3), axis=0))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    axes[0].imshow(image)
    axes[0].set_title(f"original: {n_colours:,} distinct colours")
    axes[1].imshow(quantized)
    axes[1].set_title(
        f"64 colours: jaxkmeans.fit on {len(pixels):,} pixels, {int(result.n_iter)} iterations"
    )
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def digits(out: pathlib.Path) -> None:
    """The drop-in KMeans on load_digits: centers as 8x8 images, a contingency table."""
    from sklearn.datasets import load_digits
    from sklearn.metrics import adjusted_rand_score

    from jaxkmeans.sklearn import KMeans

    x, y = load_digits(return_X_y=True)
    km = KMeans(n_clusters=10, n_init=4, random_state=0).fit(x)
    # Name each cluster by the digit most of its members are.
    table = np.zeros((10, 10), int)
    np.add.at(table, (km.labels_, y), 1)
    order = np.argsort(table.argmax(axis=1), kind="stable")

    fig = plt.figure(figsize=(12, 5.2))
    grid = fig.add_gridspec(2, 10, height_ratios=[1, 2.2])
    for col, c in enumerate(order):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(km.cluster_centers_[c].reshape(8, 8), cmap="gray_r")
        ax.set_title(f"mostly {table[c].argmax()}", fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[1, :])
    im = ax.imshow(table[order].T, cmap="Blues", aspect="auto")
    ax.set_xticks(range(10), [str(i) for i in range(10)], fontsize=8)
    ax.set_xlabel("cluster (the columns of the centers above)", fontsize=9)
    ax.set_yticks(range(10), [f"digit {d}" for d in range(10)], fontsize=8)
    ax.set_title("how many images of each true digit fall in each cluster", fontsize=9)
    for i in range(10):
        for j in range(10):
            v = table[order][i, j]
            if v:
                ax.text(
                    i,
                    j,
                    v,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > table.max() / 2 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.02)
    ari = adjusted_rand_score(y, km.labels_)
    fig.suptitle(
        f"jaxkmeans.sklearn.KMeans(n_clusters=10, n_init=4) on load_digits ({len(x)} images, "
        f"64 features): inertia {km.inertia_:,.0f}, adjusted Rand index {ari:.3f}"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def streaming(out: pathlib.Path) -> None:
    """Full batch over a memmap read in slices, and mini-batch, on the same rows."""
    rng = np.random.default_rng(0)
    k, n, d = 8, 400_000, 2
    means = rng.uniform(-20, 20, size=(k, d)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        labels = rng.integers(0, k, n)
        mm[:] = means[labels] + rng.normal(scale=2.0, size=(n, d)).astype(np.float32)
        mm.flush()
        del mm
        data = np.load(path, mmap_mode="r")  # never read whole

        def slices():  # one pass = 20 slices of 20,000 rows
            for start in range(0, n, 20_000):
                yield np.asarray(data[start : start + 20_000])

        full = jaxkmeans.KMeans(
            k,
            model_dir=os.path.join(tmp, "full"),
            use_mini_batch=False,
            initial_clusters="kmeans_plus_plus",
            seed=0,
        )
        full.train(slices, max_steps=15)
        mini = jaxkmeans.KMeans(
            k,
            model_dir=os.path.join(tmp, "mini"),
            use_mini_batch=True,
            initial_clusters="kmeans_plus_plus",
            seed=0,
        )
        mini.train(slices, max_steps=60)  # one step per slice: 3 passes
        full_score = full.score(slices)
        mini_score = mini.score(slices)
        sample = np.asarray(data[rng.choice(n, 5_000, replace=False)])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    steps, losses = zip(*full.loss_history, strict=True)
    axes[0].plot(steps, np.asarray(losses) / n, "o-")
    axes[0].set_title(
        "full batch: loss per row before each step's update\n(one step = one pass, 20 slices)"
    )
    axes[0].set_xlabel("global_step")
    steps, losses = zip(*mini.loss_history, strict=True)
    axes[1].plot(steps, losses, ".-")
    axes[1].set_title("mini-batch: batch loss per row\n(one step = one slice)")
    axes[1].set_xlabel("global_step")
    axes[2].scatter(sample[:, 0], sample[:, 1], s=2, c="0.7")
    axes[2].scatter(*means.T, marker="+", s=150, c="k", label="true means")
    axes[2].scatter(*full.cluster_centers().T, marker="x", s=70, label="full batch")
    axes[2].scatter(
        *mini.cluster_centers().T,
        marker="o",
        s=60,
        facecolors="none",
        edgecolors="tab:red",
        label="mini-batch",
    )
    axes[2].legend(loc="best", fontsize=8)
    axes[2].set_title(
        f"final centers; score (sum over all {n:,} rows):\n"
        f"full batch {full_score:,.0f}, mini-batch {mini_score:,.0f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


EXAMPLES = {"china": china, "digits": digits, "streaming": streaming}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"some of {list(EXAMPLES)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(EXAMPLES))
    if unknown:
        parser.error(f"unknown example(s) {unknown}; choose from {list(EXAMPLES)}")
    IMAGES.mkdir(exist_ok=True)
    for name in args.names or EXAMPLES:
        out = IMAGES / f"{name}.png"
        EXAMPLES[name](out)
        print(f"wrote {out.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
