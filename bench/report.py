#!/usr/bin/env python
"""Renders ``bench/RESULTS.md`` and the PNG plot from a result JSON written by ``run.py``.

Usage::

    python bench/report.py                 # newest bench/results/*.json
    python bench/report.py RESULT.json     # a given result file
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"

LABELS = {
    "jaxkmeans": "jaxkmeans fit",
    "jaxkmeans_step": "jaxkmeans lloyd_step",
    "jaxkmeans_xla": "lloyd_step, pure XLA",
    "sklearn": "scikit-learn",
    "faiss": "faiss-cpu",
    "numpy_gemm": "numpy GEMM",
}


# --------------------------------------------------------------------------- formatting


def _g(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _gib(nbytes: float | None) -> str:
    if nbytes is None:
        return "—"
    if abs(nbytes) >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.0f} MiB"


def _n(n: int) -> str:
    """200000 -> "2e5", 250000 -> "25e4", 1234 -> "1234"."""
    e = 0
    while n >= 10 and n % 10 == 0:
        n //= 10
        e += 1
    return f"{n}e{e}" if e >= 3 else str(n * 10**e)


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(BENCH_DIR).as_posix()
    except ValueError:
        return str(path.resolve())


def _shape(row: dict[str, Any]) -> str:
    return f"{_n(row['N'])} × {row['D']} × {row['K']}"


def _cell(entry: dict[str, Any]) -> str:
    if not entry:
        return "—"
    if entry.get("s_per_iter") is None:
        return "error" if entry.get("error") else "—"
    return f"{_g(entry['s_per_iter'])} s ({entry['gflops']:.1f})"


def lloyd_line(row: dict[str, Any]) -> str:
    parts = []
    for name, entry in row["contestants"].items():
        if entry.get("s_per_iter") is not None:
            parts.append(f"{name} {entry['s_per_iter']:.4g} s/it {entry['gflops']:.1f} GF/s")
        else:
            parts.append(f"{name} error")
    ratio = row["ratios"].get("jaxkmeans/best_peer")
    if ratio is not None:
        parts.append(f"jax/best peer {ratio:.2f}")
    return "; ".join(parts)


def init_line(row: dict[str, Any]) -> str:
    parts = []
    for name, entry in row["contestants"].items():
        if entry.get("seconds") is not None:
            parts.append(f"{name} {entry['seconds']:.3g} s")
        else:
            parts.append(f"{name} error")
    return "; ".join(parts)


def minibatch_line(row: dict[str, Any]) -> str:
    parts = []
    for name, entry in row["contestants"].items():
        if entry.get("steps_per_s") is not None:
            parts.append(f"{name} {entry['steps_per_s']:.1f} steps/s")
        else:
            parts.append(f"{name} error")
    return "; ".join(parts)


def memory_line(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"error: {row['error']}"
    return (
        f"peak extra (ru_maxrss - RSS after data) {_gib(row.get('peak_extra_ru_maxrss'))}, "
        f"steady numpy input {_gib(row.get('numpy_input_peak_extra'))}, "
        f"device input {_gib(row.get('device_input_peak_extra'))}; "
        f"naive n*k*4 would be {_gib(row.get('naive_nk_bytes'))}"
    )


def _native_text(v: dict[str, Any]) -> str:
    if "jaxkmeans_native" not in v:
        return "not recorded"
    if v["jaxkmeans_native"]:
        return "used"
    return f"not used ({v.get('jaxkmeans_native_error') or 'switched off'})"


# --------------------------------------------------------------------------- tables


def lloyd_table(result: dict[str, Any]) -> str:
    rows = result.get("lloyd", [])
    if not rows:
        return "(no Lloyd results)"
    rtol = result.get("config", {}).get("inertia_rtol", 1e-4)
    names = list(rows[0]["contestants"])
    checked = [n for n in names if n != "numpy_gemm"]
    head = ["N × D × K", "iters"]
    head += [f"{LABELS.get(n, n)} s/iter (GFLOP/s)" for n in names]
    head += ["fit / faster peer", "lloyd_step / faster peer"]
    head += ["inertia Δ vs f64 (" + " / ".join(LABELS.get(n, n) for n in checked) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ratios = row.get("ratios", {})
        cells = [_shape(row), str(row["iters"])]
        cells += [_cell(row["contestants"].get(n, {})) for n in names]
        for mine in ("jaxkmeans", "jaxkmeans_step"):
            r = ratios.get(f"{mine}/best_peer")
            peer = ratios.get(f"{mine}/best_peer_name", "")
            cells.append("—" if r is None else f"{r:.2f} ({peer})")
        rels = [row["contestants"].get(n, {}).get("inertia_rel_diff") for n in checked]
        known = [abs(r) for r in rels if r is not None]
        verdict = "" if not known else (" ok" if max(known) <= rtol else " **DIFF**")
        cells.append(" / ".join("—" if r is None else f"{r:+.0e}" for r in rels) + verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _iters_note(result: dict[str, Any]) -> list[str]:
    notes = []
    for row in result.get("lloyd", []):
        for name, entry in row["contestants"].items():
            its = entry.get("n_iter_all")
            if its and min(its) < row["iters"]:
                notes.append(
                    f"- {_shape(row)}: {LABELS.get(name, name)} stopped after {sorted(set(its))} "
                    f"of {row['iters']} iterations (time divided by its own count)."
                )
        ref = row.get("reference") or {}
        if ref.get("labels_fixed_from_update") is not None:
            notes.append(
                f"- {_shape(row)}: the float64 reference reached a fixed point at update "
                f"{ref['labels_fixed_from_update']}."
            )
        if ref.get("empty_cluster_events"):
            notes.append(
                f"- {_shape(row)}: {ref['empty_cluster_events']} empty-cluster events in the "
                "reference, which moves them to the farthest points like scikit-learn; faiss "
                "splits large clusters instead, so its inertia may legitimately differ."
            )
    return notes


def init_table(result: dict[str, Any]) -> str:
    rows = result.get("init", [])
    if not rows:
        return "(no init results)"
    names: list[str] = []
    for row in rows:
        names += [n for n in row["contestants"] if n not in names]
    head = ["N × D × K"] + [f"{n} s (inertia / sklearn's)" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [_shape(row)]
        for n in names:
            e = row["contestants"].get(n, {})
            if e.get("seconds") is None:
                cells.append("error" if e.get("error") else "—")
            else:
                cells.append(f"{_g(e['seconds'])} ({_g(e.get('inertia_vs_sklearn'), 4)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def minibatch_table(result: dict[str, Any]) -> str:
    rows = result.get("minibatch", [])
    if not rows:
        return "(no mini-batch results)"
    head = [
        "D × K",
        "batch",
        "jaxkmeans steps/s",
        "scikit-learn steps/s",
        "jax / sklearn",
        "final inertia Δ (jax vs sklearn)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        jx = row["contestants"].get("jaxkmeans", {})
        sk = row["contestants"].get("sklearn", {})
        rel = row.get("inertia_rel_diff_jax_vs_sklearn")
        cells = [
            f"{row['D']} × {row['K']}",
            str(row["batch"]),
            _num(jx.get("steps_per_s")) if jx.get("steps_per_s") else ("error" if jx else "—"),
            _num(sk.get("steps_per_s")) if sk.get("steps_per_s") else ("error" if sk else "—"),
            _g(row.get("speedup_jax_over_sklearn")),
            "—" if rel is None else f"{rel:+.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(result: dict[str, Any]) -> str:
    rows = result.get("memory", [])
    if not rows:
        return "(no memory results)"
    head = [
        "N × D × K",
        "data x",
        "peak extra: ru_maxrss − RSS after data (1st call, incl. compile)",
        "peak extra, numpy input (2nd call)",
        "peak extra, device input",
        "naive n·k·4",
        "assign s (GFLOP/s)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {_shape(row)} | error: {row['error']} |" + " |" * (len(head) - 2))
            continue
        valid = "" if row.get("ru_maxrss_valid", True) else " (ru_maxrss polluted)"
        cells = [
            _shape(row),
            _gib(row.get("x_bytes")),
            _gib(row.get("peak_extra_ru_maxrss")) + valid,
            _gib(row.get("numpy_input_peak_extra")),
            _gib(row.get("device_input_peak_extra")),
            _gib(row.get("naive_nk_bytes")),
            f"{_g(row.get('device_input_s'))} ({_g(row.get('gflops_device_input'))})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def errors_section(result: dict[str, Any]) -> list[str]:
    seen: dict[str, str] = {}
    for section in ("lloyd", "init", "minibatch"):
        for row in result.get(section, []):
            for name, entry in row["contestants"].items():
                if entry.get("error"):
                    seen.setdefault(f"{section}/{name}", entry["error"])
    for name, msg in (result.get("import_errors") or {}).items():
        seen.setdefault(f"import/{name}", msg)
    return [f"- `{key}`: {msg}" for key, msg in seen.items()]


def _load(values: Any) -> str:
    return "—" if not values else " ".join(f"{v:.2f}" for v in values)


def render_markdown(result: dict[str, Any], json_rel: str, png_rel: str | None) -> str:
    m = result.get("machine", {})
    v = result.get("versions", {})
    th = result.get("threads", {})
    cfg = result.get("config", {})
    pools = th.get("threadpoolctl") or []
    if isinstance(pools, list):
        pool_text = ", ".join(
            f"{p.get('prefix')}({p.get('internal_api')})={p.get('num_threads')}" for p in pools
        )
    else:
        pool_text = str(pools)
    busy = ""
    load = result.get("load_avg_start") or [0.0]
    cores = m.get("cores_available") or 1
    if max(load[0], (result.get("load_avg_end") or [0.0])[0]) > 0.5 * cores + 0.5:
        busy = (
            f"> **Busy machine**: load average {_load(result.get('load_avg_start'))} at start, "
            f"{_load(result.get('load_avg_end'))} at end on {cores} cores; timings are noisy "
            "(every repetition is in the JSON). Rerun on an idle machine before comparing."
        )
    out = [
        "# Benchmark results",
        "",
        *([busy, ""] if busy else []),
        f"Generated by `bench/report.py` from `{json_rel}` "
        f"({result.get('mode')} mode, {result.get('created')}). Do not edit by hand; "
        "rerun `python bench/run.py` (or `python bench/report.py`).",
        "",
        f"- Machine: {m.get('cpu_model')} ({m.get('cpu_vendor')}, family/model "
        f"{m.get('cpu_family_model')}), {m.get('cores_available')} cores available, "
        f"{m.get('mem_total_gib')} GiB RAM, flags {', '.join(m.get('cpu_flags') or [])}; "
        f"host `{m.get('hostname')}`",
        f"- Versions: jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, jaxkmeans {v.get('jaxkmeans')} "
        f"({v.get('git_commit')}), scikit-learn {v.get('sklearn')}, faiss {v.get('faiss')}, "
        f"numpy {v.get('numpy')}, Python {m.get('python')}; native CPU kernel: "
        f"{_native_text(v)}",
        f"- Threads: {th.get('threads')} for every contestant (OMP/OPENBLAS/MKL_NUM_THREADS, "
        f"threadpoolctl limit, faiss omp {th.get('faiss_omp_max_threads')}, XLA: all available "
        f"cores); OPENBLAS_CORETYPE={th.get('openblas_coretype') or 'unset'}; "
        f"threadpoolctl: {pool_text}",
        f"- Load average (1/5/15 min) at start: {_load(result.get('load_avg_start'))}, at end: "
        f"{_load(result.get('load_avg_end'))}; wall time {result.get('elapsed_s', 0):.0f} s",
        f"- Data: {cfg.get('data')}, seed {cfg.get('seed')}; init: {cfg.get('init')}; "
        f"median of {cfg.get('reps')} interleaved repetitions after one warm-up each",
        "",
        "## Lloyd iterations",
        "",
        "Seconds per Lloyd iteration (time of one run / its iteration count) and achieved "
        "GFLOP/s = 2·N·K·D / (s/iter). `fit / faster peer` = jaxkmeans time per iteration / "
        "the faster of scikit-learn and faiss (< 1: jaxkmeans is faster). `inertia Δ` = "
        "relative difference of the float64 inertia of each contestant's final centers "
        "against a float64 numpy Lloyd run from the same initial centers "
        f"(ok: |Δ| ≤ {cfg.get('inertia_rtol', 1e-4):g}).",
        "",
        lloyd_table(result),
        "",
    ]
    notes = _iters_note(result)
    if notes:
        out += ["Notes:", *notes, ""]
    if png_rel:
        out += [f"![time per iteration vs K]({png_rel})", ""]
    out += [
        "## Initialization",
        "",
        "Seconds per call (median) and the float64 inertia of the returned centers "
        "relative to scikit-learn's `kmeans_plusplus` (< 1 is better).",
        "",
        init_table(result),
        "",
        "## Mini-batch",
        "",
        f"{cfg.get('mb_steps')} timed steps after one untimed first step; jaxkmeans: jitted "
        "`minibatch_step(state, batch)` from `KMeansState.create(centers)`; scikit-learn: "
        "`MiniBatchKMeans(init=centers, reassignment_ratio=0).partial_fit(batch)`.",
        "",
        minibatch_table(result),
        "",
        "## Peak memory of `jaxkmeans.assign(x, centers)`",
        "",
        "Measured in a fresh subprocess. Extra = peak RSS during the call minus RSS before "
        "it (VmHWM, reset per call via /proc/self/clear_refs), plus the ru_maxrss variant for "
        "the first call.",
        "",
        memory_table(result),
        "",
    ]
    errs = errors_section(result)
    if errs:
        out += ["## Errors", "", *errs, ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- plot


def plot(result: dict[str, Any], png_path: Path) -> bool:
    rows = result.get("lloyd", [])
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in rows:
        panels.setdefault((row["N"], row["D"]), []).append(row)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False, constrained_layout=True
    )
    names = list(rows[0]["contestants"])
    for ax, ((n, d), prow) in zip(axes.flat, sorted(panels.items()), strict=False):
        prow = sorted(prow, key=lambda r: r["K"])
        for name in names:
            pts = [
                (r["K"], r["contestants"][name]["s_per_iter"])
                for r in prow
                if r["contestants"].get(name, {}).get("s_per_iter")
            ]
            if pts:
                ks, ts = zip(*pts, strict=True)
                style = "--" if name == "numpy_gemm" else "-"
                ax.plot(ks, ts, style, marker="o", label=LABELS.get(name, name))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ks = sorted({r["K"] for r in prow})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if len(ks) == 1:
            ax.set_xlim(ks[0] / 2, ks[0] * 2)
        ax.set_title(f"N={n:,}  D={d}")
        ax.set_xlabel("K")
        ax.set_ylabel("seconds / iteration")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        axes.flat[0].legend(handles, labels, fontsize=8)
    m = result.get("machine", {})
    threads = result.get("threads", {}).get("threads")
    fig.suptitle(
        f"Lloyd time per iteration — {m.get('cpu_model')}, {threads} threads "
        f"({result.get('created', '')[:10]}, {result.get('mode')})",
        fontsize=10,
    )
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- entry points


def newest_result(results_dir: Path = RESULTS_DIR) -> Path:
    candidates = []
    for path in results_dir.glob("*.json"):
        try:
            created = json.loads(path.read_text()).get("created", "")
        except (OSError, ValueError):
            continue
        candidates.append((created, path.stat().st_mtime, path))
    if not candidates:
        raise SystemExit(f"no result JSON in {results_dir}")
    return max(candidates)[2]


def write_report(json_path: Path, md_path: Path = RESULTS_MD) -> Path:
    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    png_path = json_path.with_suffix(".png")
    has_png = plot(result, png_path)
    md_path.write_text(
        render_markdown(result, _rel(json_path), _rel(png_path) if has_png else None) + "\n"
    )
    return md_path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path = Path(argv[0]) if argv else newest_result()
    md = write_report(path)
    print(f"wrote {md} and {path.with_suffix('.png')} from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
