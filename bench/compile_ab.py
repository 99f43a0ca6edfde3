"""Side-by-side first-call time of ``jaxkmeans.fit`` (k-means++, n_init=1) in two
checkouts: this one and an older one (e.g. a git worktree of the commit before the size
buckets, with its native kernel built by ``python setup.py build_ext --inplace``).

Each repetition runs one fresh process per checkout, alternating, with no persistent
compilation cache: import, the first fit at 10,000 x 10 -> 8, and a fit at 12,345 rows
(another size bucket). Writes a JSON with every run and the medians.

    python bench/compile_ab.py --old /tmp/old --reps 5 --out bench/results/followup/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import time
t0 = time.perf_counter()
import numpy as np, jax, jaxkmeans
t_import = time.perf_counter() - t0
x = np.random.default_rng(0).normal(size=(10000, 10)).astype(np.float32)
t = time.perf_counter()
r = jaxkmeans.fit(jax.random.key(0), x, 8, init="kmeans_plus_plus", n_init=1)
jax.block_until_ready(r.centers)
t_first = time.perf_counter() - t
x2 = np.random.default_rng(1).normal(size=(12345, 10)).astype(np.float32)
t = time.perf_counter()
r = jaxkmeans.fit(jax.random.key(0), x2, 8, init="kmeans_plus_plus", n_init=1)
jax.block_until_ready(r.centers)
t_other = time.perf_counter() - t
print({"import": t_import, "first": t_first, "other_size": t_other})
"""


# The child fails unless it imported the checkout it was given.
CHECK = """
import pathlib
assert pathlib.Path(jaxkmeans.__file__).resolve().is_relative_to({root!r}), jaxkmeans.__file__
"""


def run(path: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(path), JAXKMEANS_COMPILATION_CACHE="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    # Run in the checkout's root: `python -c` puts the working directory first on
    # sys.path, ahead of PYTHONPATH, so from another checkout's root the child would
    # import that one instead (which the first version of this script did).
    out = subprocess.run(
        [sys.executable, "-c", CHILD + CHECK.format(root=str(path.resolve()))],
        env=env,
        cwd=path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return eval(out.stdout.strip().splitlines()[-1])  # a dict of floats printed by CHILD


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", type=Path, required=True, help="the older checkout's root")
    p.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for rep in range(args.reps):
        for name in ("old", "new"):
            r = run(getattr(args, name))
            runs[name].append(r)
            print(rep, name, {k: round(v, 3) for k, v in r.items()}, flush=True)
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    git = lambda path: subprocess.run(  # noqa: E731
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result = {
        "what": "jaxkmeans.fit(k-means++, n_init=1) first call, 10000 x 10 -> 8, fresh "
        "processes, no persistent cache; then a fit at 12345 rows",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "old": {"path": str(args.old), "commit": git(args.old)},
        "new": {"path": str(args.new), "commit": git(args.new)},
        "load_avg": os.getloadavg(),
        "runs": runs,
        "medians": medians,
        "first_fit_ratio_new_over_old": medians["new"]["first"] / medians["old"]["first"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(medians), "ratio", round(result["first_fit_ratio_new_over_old"], 3))


if __name__ == "__main__":
    main()
