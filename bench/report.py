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


def _early_stops(rows: list[dict[str, Any]], where, labels: dict[str, str], tail: str) -> list[str]:
    """One note per contestant that stopped before the requested iteration count."""
    notes = []
    for row in rows:
        for name, entry in row["contestants"].items():
            its = entry.get("n_iter_all")
            if its and min(its) < row["iters"]:
                notes.append(
                    f"- {where(row)}: {labels.get(name, name)} stopped after {sorted(set(its))} "
                    f"of {row['iters']} iterations{tail}."
                )
    return notes


def _iters_note(result: dict[str, Any]) -> list[str]:
    notes = _early_stops(
        result.get("lloyd", []), _shape, LABELS, " (time divided by its own count)"
    )
    for row in result.get("lloyd", []):
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


# --------------------------------------------------------------------------- whole fit

FIT_LABELS = {
    "jaxkmeans_fit": "jaxkmeans.fit",
    "jaxkmeans_train": "KMeans.train",
    "jaxkmeans_sklearn": "jaxkmeans.sklearn",
    "sklearn": "scikit-learn",
    "faiss": "faiss-cpu",
    "jaxkmeans_fit_from_centers": "fit from centers",
    "jaxkmeans_steps_assign": "lloyd_steps + assign",
}
FIT_MAIN = ("jaxkmeans_fit", "jaxkmeans_train", "jaxkmeans_sklearn", "sklearn", "faiss")
FIT_MINE = ("jaxkmeans_fit", "jaxkmeans_train", "jaxkmeans_sklearn")


def _fit_shape(row: dict[str, Any]) -> str:
    return f"{_shape(row)}"


def _x(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}×"


def fit_line(row: dict[str, Any]) -> str:
    parts = []
    for name, entry in row["contestants"].items():
        label = FIT_LABELS.get(name, name)
        if entry.get("seconds") is not None:
            ratio = entry.get("time_vs_best_peer")
            parts.append(
                f"{label} {entry['seconds']:.3g} s"
                + ("" if ratio is None or name in ("sklearn", "faiss") else f" ({ratio:.2f}x)")
            )
        elif entry.get("error"):
            parts.append(f"{label} error")
    if row.get("fit_vs_steps_assign") is not None:
        parts.append(f"fit/(steps+assign) {row['fit_vs_steps_assign']:.2f}")
    return "; ".join(parts)


def fit_memory_line(mem: dict[str, Any]) -> str:
    if mem.get("error"):
        return f"error: {mem['error']}"
    return (
        f"peak extra 1st call {_gib(mem.get('first_peak_extra'))} "
        f"({_g(mem.get('first_peak_extra_x'))}x data), 2nd call "
        f"{_gib(mem.get('second_peak_extra'))} ({_g(mem.get('second_peak_extra_x'))}x; "
        f"{_g(mem.get('second_call_extra_x'))}x above its start); "
        f"cold fit {_g(mem.get('first_s'))} s, warm {_g(mem.get('second_s'))} s"
    )


def _fit_cell(entry: dict[str, Any]) -> str:
    if entry.get("seconds") is None:
        return "error" if entry.get("error") else "—"
    return _g(entry["seconds"])


def fit_table(result: dict[str, Any]) -> str:
    rows = result.get("fit", [])
    if not rows:
        return "(no whole-fit results)"
    head = ["N × D × K", "init", "iters"]
    head += [f"{FIT_LABELS[n]} s" for n in FIT_MAIN]
    head += [f"{FIT_LABELS[n]} / faster peer" for n in FIT_MINE]
    head += ["inertia / scikit-learn's (" + " / ".join(FIT_LABELS[n] for n in FIT_MAIN) + ")"]
    head += ["fit / (lloyd_steps + assign)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cs = row["contestants"]
        peer = FIT_LABELS.get(row.get("best_peer", ""), "")
        cells = [_fit_shape(row), row["init"], str(row["iters"])]
        cells += [_fit_cell(cs.get(n, {})) for n in FIT_MAIN]
        for n in FIT_MINE:
            r = cs.get(n, {}).get("time_vs_best_peer")
            cells.append("—" if r is None else f"{r:.2f} ({peer})")
        cells.append(" / ".join(_g(cs.get(n, {}).get("inertia_vs_sklearn"), 4) for n in FIT_MAIN))
        pair = row.get("fit_vs_steps_assign")
        rel = row.get("fit_vs_steps_assign_inertia_rel_diff")
        cells.append(
            "—" if pair is None else f"{pair:.2f}" + ("" if rel is None else f" (Δ {rel:+.0e})")
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_memory_table(result: dict[str, Any]) -> str:
    rows = [
        row
        for row in result.get("fit", [])
        if any("memory" in e for e in row["contestants"].values())
    ]
    if not rows:
        return "(no whole-fit memory results)"
    head = ["N × D × K", "init", "data"]
    head += [f"{FIT_LABELS[n]}: 1st / 2nd call (2nd above its start)" for n in FIT_MAIN]
    head += ["cold 1st fit s (" + " / ".join(FIT_LABELS[n] for n in FIT_MAIN) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        mems = [row["contestants"].get(n, {}).get("memory") or {} for n in FIT_MAIN]
        x_bytes = next((m["x_bytes"] for m in mems if m.get("x_bytes")), None)
        cells = [_fit_shape(row), row["init"], _gib(x_bytes)]
        for m in mems:
            if m.get("error"):
                cells.append("error")
            elif not m:
                cells.append("—")
            else:
                polluted = "" if m.get("hwm_resettable", True) else " (ru_maxrss)"
                own = m.get("second_call_extra_x")
                cells.append(
                    f"{_x(m.get('first_peak_extra_x'))} / {_x(m.get('second_peak_extra_x'))}"
                    + ("" if own is None else f" ({_x(own)})")
                    + polluted
                )
        cells.append(" / ".join(_g(m.get("first_s")) for m in mems))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fit_notes(result: dict[str, Any]) -> list[str]:
    return _early_stops(
        result.get("fit", []), lambda row: f"{_fit_shape(row)} {row['init']}", FIT_LABELS, ""
    )


# --------------------------------------------------------------------------- compile time

COMPILE_LABELS = {
    "fit_kmeans_plus_plus": "`fit` (k-means++, n_init=1)",
    "fit_given_centers": "`fit` (given centers)",
    "assign": "`assign`",
    "inertia": "`inertia`",
    "lloyd_step": "`lloyd_step`",
    "init_centers_kmeans_plus_plus": "`init_centers` (k-means++)",
    "minibatch_step": "`minibatch_step`",
    "train_full_batch": "`KMeans.train` (full batch, 10 steps)",
    "sklearn_dropin": "`jaxkmeans.sklearn.KMeans.fit`",
    "sklearn": "scikit-learn `KMeans.fit`",
    "sklearn_dropin_cached": "`jaxkmeans.sklearn.KMeans.fit`, 2nd process (cache filled)",
    "fit_kmeans_plus_plus_cached": "`fit` (k-means++), 2nd process (cache filled)",
}


def compile_run_line(run: dict[str, Any]) -> str:
    if run.get("error"):
        return f"error: {run['error']}"
    parts = [f"import {_g(run.get('import_s'))} s"]
    for tag, call in run.get("calls", {}).items():
        if call.get("error"):
            parts.append(f"{tag} error: {call['error']}")
        else:
            comp = call.get("backend_compiles")
            parts.append(
                f"{tag} ({call['rows']} rows) {_g(call.get('s'))} s"
                + ("" if comp is None else f" [{comp} compiles]")
                + ("" if call.get("n_iter") is None else f" {call['n_iter']} it")
            )
    return "; ".join(parts)


def _s_and_compiles(entry: dict[str, Any], tag: str) -> str:
    s = entry.get(f"{tag}_s")
    if s is None:
        return "error" if entry.get("error") else "—"
    comp = entry.get(f"{tag}_compiles")
    return _g(s) + ("" if comp is None else f" [{comp}]")


def compile_table(result: dict[str, Any]) -> str:
    sec = result.get("compile")
    if not sec or not sec.get("entries"):
        return "(no compile-time results)"
    sizes = sec.get("sizes", {})
    head = [
        "entry point",
        "import s",
        f"1st call s [compiles] ({sizes.get('first')} rows)",
        "2nd call s [compiles]",
        "≈ compile s (1st − 2nd)",
        "JAX trace+compile s (1st)",
        f"new size, same bucket s [compiles] ({sizes.get('same_bucket')} rows)",
        "same bucket / 2nd",
        f"new size, other bucket s [compiles] ({sizes.get('other_bucket')} rows)",
        "other bucket / 2nd",
        "import + 1st + new size (same / other bucket) / scikit-learn's",
        "fit iterations (1st / same / other bucket)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in sec["entries"].items():
        ratios = [e.get("session_same_bucket_vs_sklearn"), e.get("session_other_bucket_vs_sklearn")]
        cells = [
            COMPILE_LABELS.get(name, name),
            _g(e.get("import_s")),
            _s_and_compiles(e, "first"),
            _s_and_compiles(e, "second"),
            _g(e.get("compile_s")),
            _g(e.get("first_compile_s")),
            _s_and_compiles(e, "same_bucket"),
            _x(e.get("same_bucket_vs_second"), 1),
            _s_and_compiles(e, "other_bucket"),
            _x(e.get("other_bucket_vs_second"), 1),
            "—" if name == "sklearn" else " / ".join(_x(r, 1) for r in ratios),
            " / ".join(
                str(e.get(f"{t}_n_iter", "—")) for t in ("first", "same_bucket", "other_bucket")
            )
            if e.get("first_n_iter") is not None
            else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compile_targets(result: dict[str, Any]) -> list[str]:
    sec = result.get("compile") or {}
    entries = sec.get("entries") or {}
    out = []
    for name in (
        "sklearn_dropin",
        "sklearn_dropin_cached",
        "fit_kmeans_plus_plus",
        "fit_kmeans_plus_plus_cached",
    ):
        e = entries.get(name, {})
        if e.get("session_same_bucket_vs_sklearn") is not None:
            out.append(
                f"- {COMPILE_LABELS[name]}: import + first fit + fit at a new size = "
                f"{_g(e.get('session_same_bucket_s'))} s (same bucket) / "
                f"{_g(e.get('session_other_bucket_s'))} s (other bucket), "
                f"{_x(e.get('session_same_bucket_vs_sklearn'), 1)} / "
                f"{_x(e.get('session_other_bucket_vs_sklearn'), 1)} scikit-learn's "
                "(issue 15 target for the drop-in: ≤ 2×)."
            )
        if e.get("same_bucket_vs_second") is not None:
            out.append(
                f"- {COMPILE_LABELS[name]}: fit at a new size within the bucket / repeated fit "
                f"= {_x(e.get('same_bucket_vs_second'), 1)} (target ≤ 3×)."
            )
    return out


def errors_section(result: dict[str, Any]) -> list[str]:
    seen: dict[str, str] = {}
    for section in ("lloyd", "init", "minibatch", "fit"):
        for row in result.get(section, []):
            for name, entry in row["contestants"].items():
                if entry.get("error"):
                    seen.setdefault(f"{section}/{name}", entry["error"])
                if (entry.get("memory") or {}).get("error"):
                    seen.setdefault(f"{section}/{name}/memory", entry["memory"]["error"])
    for name, entry in ((result.get("compile") or {}).get("entries") or {}).items():
        if entry.get("error"):
            seen.setdefault(f"compile/{name}", entry["error"])
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
    if result.get("fit"):
        out += fit_section(result)
    if result.get("compile"):
        out += compile_section(result)
    errs = errors_section(result)
    if errs:
        out += ["## Errors", "", *errs, ""]
    return "\n".join(out)


def fit_section(result: dict[str, Any]) -> list[str]:
    cfg = result.get("config", {})
    out = [
        "## Whole fit",
        "",
        "What users call, end to end: the library's own initialization, "
        f"{cfg.get('fit_iters', 10)} Lloyd iterations (`tol=0`) and the final labels, on "
        "host (numpy) float32 data; seconds are the median of interleaved repetitions after "
        "one warm-up each. `jaxkmeans.fit(key, x, k, init=..., max_iter, tol=0)` (blocked on "
        "centers and labels); `KMeans.train` = the estimator, `use_mini_batch=False`, "
        "`train(input_fn, steps)` + `cluster_centers()` (no labels; includes its end-of-train "
        "checkpoint); `jaxkmeans.sklearn` = the drop-in with scikit-learn's settings; "
        "scikit-learn `KMeans(k, init, n_init=1, max_iter, tol=0, algorithm='lloyd')`; "
        "faiss-cpu `Kmeans(d, k, niter, nredo=1, max_points_per_centroid=1e9)` + "
        "`index.search(x, 1)` for the labels, with **faiss's own initialization** (random rows; "
        "its k-means++ for the k-means++ rows). Each library draws its own initial centers, "
        "so the inertia column (float64 inertia of the final centers / scikit-learn's) "
        "compares init + iterations, not arithmetic. `… / faster peer` = seconds / the "
        "faster of scikit-learn and faiss. `fit / (lloyd_steps + assign)` = "
        "`fit(init=centers)` / (the same number of `lloyd_step`s in one jitted loop + one "
        "`assign`), both from the same centers on a device array (Δ: their inertia).",
        "",
        fit_table(result),
        "",
    ]
    notes = _fit_notes(result)
    if notes:
        out += ["Notes:", *notes, ""]
    out += [
        "### Peak extra memory of a whole fit",
        "",
        "A fresh subprocess per contestant and shape: peak RSS (VmHWM, reset before each call) "
        "minus the RSS with the data loaded (libraries imported, float32 `x` in memory), as a "
        "multiple of the data's bytes; 1st call = the first fit in the process (compile "
        "included), 2nd call = the same fit again; in parentheses the 2nd call's peak above "
        "the RSS just before it (its own working memory, without what the first call left "
        "resident: compiled programs and caches, a few hundred MiB for jaxkmeans, which "
        "dominate at small N). Last column: seconds of that cold first fit.",
        "",
        fit_memory_table(result),
        "",
    ]
    return out


def compile_section(result: dict[str, Any]) -> list[str]:
    sec = result.get("compile") or {}
    out = [
        "## Compile time",
        "",
        f"A fresh process per entry point and repetition (median of {sec.get('reps')}; one "
        "untimed warm-up process first), no persistent compilation cache "
        "(`JAXKMEANS_COMPILATION_CACHE=0`, `JAX_COMPILATION_CACHE_DIR` unset), float32 numpy "
        f"blobs {sec.get('N')} × {sec.get('D')}, k = {sec.get('K')}: import seconds (numpy "
        "already imported by the harness), then four calls: the first, the same again, a new "
        "row count in the same size bucket and one in another bucket. `[n]` = JAX backend "
        "compilations during the call; `JAX trace+compile s` = their reported durations "
        "(tracing, lowering, XLA compile). Fits use the defaults (`max_iter=300`, `tol=1e-4`, "
        "k-means++ unless given centers).",
        "",
        compile_table(result),
        "",
    ]
    targets = compile_targets(result)
    if targets:
        out += ["Issue 15 targets:", *targets, ""]
    return out


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


def _run_results(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every run.py result JSON in `results_dir` (other scripts' JSON skipped)."""
    found = []
    for path in results_dir.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "schema" in data:  # not e.g. streaming_memory.py's
            found.append((path, data))
    return found


def newest_result(results_dir: Path = RESULTS_DIR) -> Path:
    candidates = [
        (data.get("created", ""), path.stat().st_mtime, path)
        for path, data in _run_results(results_dir)
        # some sections only: shown after the full run it follows
        if not _is_partial(data)
    ]
    if not candidates:
        raise SystemExit(f"no result JSON in {results_dir}")
    return max(candidates)[2]


def _side_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A separate bench script's committed JSON and its result rows (none if absent)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, []
    return data, data.get("results") or []


def sparse_section(path: Path) -> list[str]:
    """``bench/sparse.py``'s committed result (its own run), when there is one."""
    data, rows = _side_run(path)
    if not rows:
        return []
    load = (data.get("machine") or {}).get("load_average")
    out = [
        "## Sparse input (`bench/sparse.py`)",
        "",
        f"From `{_rel(path)}` ({data.get('created')}; a separate run of `bench/sparse.py`"
        + (f", load average {_load(load)} at start" if load else "")
        + f"). {data.get('note', '')}",
        "",
        "| contestant | N × D (nonzeros) | K | iters | median s (min) | time / scikit-learn "
        "(median) | inertia Δ vs scikit-learn float32 | inertia Δ vs scikit-learn float64 "
        "| extra peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.get('method')} | {_n(r['rows'])} × {_n(r['cols'])} ({_n(r['nnz'])}) | "
            f"{r.get('clusters')} | {r.get('iters')} | {_g(r.get('median_s'))} s "
            f"({_g(r.get('min_s'))} s) | {_x(r.get('median_time_ratio_vs_sklearn'))} | "
            f"{_num(r.get('inertia_rel_diff_vs_sklearn'))} | "
            f"{_num(r.get('inertia_rel_diff_vs_sklearn_float64'))} | "
            f"{_g(r.get('extra_peak_mb'), 4)} MB |"
        )
    return [*out, ""]


def streaming_section(path: Path) -> list[str]:
    """``bench/streaming_memory.py``'s committed result, when there is one."""
    data, rows = _side_run(path)
    if not rows:
        return []
    out = [
        "## Streaming memory (`bench/streaming_memory.py`)",
        "",
        f"From `{_rel(path)}` ({data.get('created')}; a separate run). Peak RSS growth of a "
        "process training the estimator over a file read in batches.",
        "",
        "| file | batch | batches | D | K | init | peak RSS growth |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {_g(r.get('file_mb'), 5)} MB | {_g(r.get('batch_mb'))} MB | {r.get('batches')} | "
            f"{r.get('dims')} | {r.get('clusters')} | {r.get('init')} | "
            f"{_g(r.get('peak_growth_mb'))} MB |"
        )
    return [*out, ""]


def _is_partial(data: dict[str, Any]) -> bool:
    """A run of some sections only (``--sections``, no Lloyd table): rendered after the
    full run it follows, never as the main run."""
    return not data.get("lloyd")


def later_partial_runs(
    main: dict[str, Any], results_dir: Path = RESULTS_DIR
) -> list[tuple[Path, dict[str, Any]]]:
    """run.py results of some sections only, created after `main` (oldest first)."""
    found = [
        (data.get("created", ""), path, data)
        for path, data in _run_results(results_dir)
        if _is_partial(data) and data.get("created", "") > main.get("created", "")
    ]
    return [(path, data) for _, path, data in sorted(found)]


def later_run_section(path: Path, data: dict[str, Any]) -> list[str]:
    """A later partial run's whole-fit and compile sections, one heading level down."""
    v = data.get("versions", {})
    load = f"load average {_load(data.get('load_avg_start'))} at start, "
    load += f"{_load(data.get('load_avg_end'))} at end"
    out = [
        f"## Later run: {', '.join(data.get('config', {}).get('sections', []))}",
        "",
        f"From `{_rel(path)}` ({data.get('created')}; jaxkmeans {v.get('git_commit')}; {load}): "
        "a run of these sections only, of newer code than the tables above. Where it "
        "repeats a table above, this one is the current code's.",
        "",
    ]
    body: list[str] = []
    if data.get("fit"):
        body += fit_section(data)
    if data.get("compile"):
        body += compile_section(data)
    return out + [("#" + line) if line.startswith("##") else line for line in body]


def write_report(json_path: Path, md_path: Path = RESULTS_MD) -> Path:
    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    png_path = json_path.with_suffix(".png")
    has_png = plot(result, png_path)
    text = render_markdown(result, _rel(json_path), _rel(png_path) if has_png else None)
    extra = []
    for path, data in later_partial_runs(result):
        extra += later_run_section(path, data)
    extra += sparse_section(RESULTS_DIR / "sparse.json")
    extra += streaming_section(RESULTS_DIR / "streaming_memory.json")
    md_path.write_text("\n".join([text, "", *extra]).rstrip("\n") + "\n")
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
