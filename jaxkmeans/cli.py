"""The ``jaxkmeans`` command line (also ``python -m jaxkmeans``).

::

    jaxkmeans fit DATA --num-clusters K --model-dir DIR [--metric cosine] [--init NAME]
                  [--mini-batch --batch-size B] [--max-steps N] [--tolerance T] [--seed S]
                  [--columns COLS] [--delimiter D] [--standardize]
    jaxkmeans predict DATA --model-dir DIR [--output FILE] [--columns COLS] [--delimiter D]
    jaxkmeans info --model-dir DIR
    jaxkmeans export --model-dir DIR --output DIR
    jaxkmeans plot --model-dir DIR DATA --output FILE.{png,pdf,svg,...}
    jaxkmeans show-config

DATA is ``-`` (standard input), a ``.npy`` file (read memory-mapped), a Parquet file
(``.parquet`` / ``.pq``, needs the ``parquet`` extra: pyarrow), or a ``.csv`` / ``.tsv`` /
``.txt`` file of numbers, also compressed (``.gz``, ``.bz2``, ``.xz``); see
:func:`read_table`. Text is read block by block, with pyarrow's CSV reader when it is
installed and numpy's otherwise. ``--columns`` picks the features (names, 0-based
positions, ``start:stop`` ranges); without it, the unnamed first column that
``pandas.DataFrame.to_csv`` writes for the index is skipped with a note on stderr. The
model remembers its features (names and ``--columns``) and ``--standardize``'s mean and
scale in ``jaxkmeans_cli.json`` beside its checkpoints; ``predict`` and ``plot`` read and
transform DATA the same way.

``fit`` and ``export`` print a one-line JSON summary on stdout, ``info`` a JSON object;
training progress goes to stderr. A user error (a bad command line, a missing or
malformed file, a model that does not fit the command, a bad argument the library
rejects) is one line on stderr (``jaxkmeans: error: ...``) and a non-zero exit: 2 for a
bad command line, 1 otherwise. An unexpected internal error keeps its traceback, for a
bug report.

Names used in every output (fit summary, ``info``, progress):

- ``loss``: the sum, over the rows of one training step, of the distance of each row
  to its nearest center (before the step's update). Full batch: over all the rows;
  mini-batch: over the step's batch.
- ``mean_loss``: ``loss`` divided by the rows of that step (only ever under this name).
- ``score``: the sum over all the given rows of the distance to the nearest final center.

Distances are squared Euclidean, or 1 - cos for ``--metric cosine``.

``fit`` saves a checkpoint every 600 seconds of training (``--save-every-secs``,
``--save-every-steps``) and at the end. Ctrl-C (SIGINT) or SIGTERM saves the last
completed step, says so on stderr and exits with status 130; the same command resumes.
On a ``--model-dir`` with a checkpoint, ``fit`` resumes: what defines the model
(--num-clusters, --metric, the width of DATA, --mini-batch or not) must match it, and
start-only settings (--init, --seed) are ignored with a warning.

Compiled programs are kept, by default, in JAX's persistent compilation cache in
``$XDG_CACHE_HOME/jaxkmeans/jax-compilation-cache`` (``~/.cache/...``), so a second run
skips compiling; ``JAXKMEANS_COMPILATION_CACHE=0`` turns this off, and a cache the user
configured for JAX (``JAX_COMPILATION_CACHE_DIR``) is used as it is. ``show-config``
prints versions, devices, the native kernel's status and the cache in use.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import dis
import importlib
import inspect
import io
import itertools
import json
import math
import os
import pathlib
import re
import secrets
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Literal, TextIO

import jax
import numpy as np

import jaxkmeans
from jaxkmeans import _config
from jaxkmeans.checkpoint import Checkpointer, CheckpointError
from jaxkmeans.initializers import INIT_METHODS

__all__ = ["main", "load_data", "read_table", "Table", "CommandError"]

PROG = "jaxkmeans"
METRICS = (jaxkmeans.SQUARED_EUCLIDEAN_DISTANCE, jaxkmeans.COSINE_DISTANCE)
# DATA: "-" (standard input), .npy, Parquet, or text (optionally compressed).
STDIN = "-"
TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
DATA_SUFFIXES = (".npy", ".parquet", ".pq", *TEXT_SUFFIXES)
DATA_FORMATS = ".npy, .parquet, .csv, .tsv or .txt (text also .gz, .bz2, .xz), or - (stdin)"
# Rows per block when reading text without pyarrow, and Parquet; bytes per block of
# pyarrow's CSV reader (a few blocks are in flight at once).
READ_BATCH_ROWS = 65_536
ARROW_BLOCK_BYTES = 4 << 20
# Rows per batch when predicting or scoring (bounds host and device memory).
PREDICT_BATCH = 65_536
DEFAULT_FULL_BATCH_STEPS = 300
DEFAULT_MINI_BATCH_PASSES = 100
DEFAULT_BATCH_SIZE = 1024
DEFAULT_TOLERANCE = 1e-4
# k-means++ extra candidates per pick: the estimator's default.
DEFAULT_NUM_RETRIES = 2
# Points drawn by `plot` (a fixed random subset beyond this).
PLOT_MAX_POINTS = 20_000
PLOT_SIZE_INCHES = (11.0, 4.5)
PLOT_DPI = 100
# Full batch with --batch-size: the sampling inits draw from a uniform random sample of
# this many rows of the whole file (not from the first batch only).
INIT_SAMPLE_MIN_ROWS = 10_000
INIT_SAMPLE_ROWS_PER_CLUSTER = 100
# `info`: loss history entries shown (all with --history).
INFO_HISTORY = 10
# What the CLI remembers about a model (beside the checkpoints, written just before its
# first checkpoint): the init method when it passed centers computed from a sample of
# the file, the fit's --columns, the feature names, --standardize's mean and scale.
CLI_STATE_FILE = "jaxkmeans_cli.json"


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Table:
    """The feature columns read from a data file.

    Attributes:
      array: (n_samples, n_features) numbers: float32 for text and Parquet (in memory),
        the stored dtype for ``.npy`` (memory-mapped unless columns were picked out).
      names: the features' names (from a header row or a Parquet schema), or None.
      columns: the features' 0-based positions in the file.
      name: how messages name the file, e.g. ``DATA 'x.csv'``.
    """

    array: np.ndarray
    names: list[str] | None
    columns: list[int]
    name: str


def load_data(
    path: str | os.PathLike,
    what: str = "DATA",
    columns: Sequence[str] | None = None,
    delimiter: str | None = None,
) -> np.ndarray:
    """Reads a data file as an ``(n, d)`` numeric array (see :func:`read_table`)."""
    return read_table(path, what, columns, delimiter).array


def read_table(
    path: str | os.PathLike,
    what: str = "DATA",
    columns: Sequence[str] | _ModelColumns | None = None,
    delimiter: str | None = None,
) -> Table:
    """Reads the feature columns of a data file.

    Args:
      path: ``-`` (standard input: ``.npy``, Parquet, gzip/bzip2/xz and text are told
        apart by their first bytes), a ``.npy`` file, a ``.parquet`` / ``.pq`` file
        (needs pyarrow), or a ``.csv`` / ``.tsv`` / ``.txt`` file of numbers, optionally
        compressed (``.gz``, ``.bz2``, ``.xz``). Text: a first row that is not all
        numbers is a header; blank lines and lines starting with ``#`` are skipped;
        numbers may be quoted.
      what: how error messages name the file (``DATA``).
      columns: the features, each a column name, a 0-based position or a range of
        positions ``start:stop`` (Python's slice, ``stop`` excluded). None: every
        column, except the unnamed first column ``pandas.DataFrame.to_csv`` writes for
        the index (skipped with a note on stderr) and Parquet columns pandas marks as
        the index.
      delimiter: for text: one character, ``\\t`` / ``tab``, or ``whitespace`` (runs of
        spaces and tabs). None: tab for ``.tsv``; else a comma if the first row has one,
        then tab, then semicolon, else whitespace.

    Returns:
      The columns as a :class:`Table` (a 1-D ``.npy`` array is one feature).

    Raises:
      CommandError: missing or unreadable file, unknown suffix, unknown column,
        non-numeric values, rows of different lengths, no rows, more than 2 dimensions.

    Examples:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
      >>> _ = path.write_text("id,x,y,label\\n7,1.5,2,a\\n8,3,4.25,b\\n")
      >>> table = read_table(path, columns=["x", "y"])
      >>> table.array
      array([[1.5 , 2.  ],
             [3.  , 4.25]], dtype=float32)
      >>> table.names, table.columns
      (['x', 'y'], [1, 2])
    """
    source = _Source.open(str(path), what)
    if delimiter is not None and source.kind != "text":
        raise CommandError(f"--delimiter only applies to text files; {source.name} is not one.")
    if source.kind == "npy":
        table = _read_npy(source, columns)
    elif source.kind == "parquet":
        table = _read_parquet(source, columns)
    else:
        table = _read_text(source, columns, delimiter)
    arr = table.array
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CommandError(f"{table.name} has no data; got shape {arr.shape}.")
    return table


def _note(message: str) -> None:
    sys.stderr.write(f"{PROG}: note: {message}\n")


_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
_MAGIC = (
    (b"\x93NUMPY", "npy"),
    (b"PAR1", "parquet"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "lzma"),
)


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a data file's bytes come from: a path, or standard input read whole."""

    kind: str  # "npy", "parquet" or "text"
    name: str  # e.g. "DATA 'x.csv'"
    suffix: str  # ".csv", ".tsv", ".txt", ".npy", ".parquet", or "" (stdin)
    path: pathlib.Path | None = None
    compression: str | None = None  # "gzip", "bz2", "lzma"
    data: bytes | None = None  # stdin

    @classmethod
    def open(cls, path: str, what: str) -> _Source:
        if path == STDIN:
            return cls._stdin(what)
        p = pathlib.Path(path).expanduser()
        name = f"{what} {path!r}"
        if not p.exists():
            raise CommandError(f"{name} does not exist.")
        if p.is_dir():
            raise CommandError(f"{name} is a directory; expected a data file ({DATA_FORMATS}).")
        suffixes = [s.lower() for s in p.suffixes[-2:]]
        compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
        if compression is not None:
            suffixes = suffixes[:-1]
        suffix = suffixes[-1] if suffixes else ""
        if suffix in (".parquet", ".pq") and compression is None:
            kind = "parquet"
        elif suffix == ".npy" and compression is None:
            kind = "npy"
        elif suffix in TEXT_SUFFIXES:
            kind = "text"
        else:
            got = "".join(p.suffixes[-2:]) or "(none)"
            raise CommandError(f"{name} must be {DATA_FORMATS}; got suffix {got!r}.")
        try:
            with open(p, "rb"):
                pass
        except OSError as e:
            raise CommandError(f"{name}: {_os_reason(e)}.") from None
        return cls(kind, name, suffix, path=p, compression=compression)

    @classmethod
    def _stdin(cls, what: str) -> _Source:
        name = f"{what} '-' (standard input)"
        stdin = sys.stdin
        buffer = getattr(stdin, "buffer", None)
        data = buffer.read() if buffer is not None else stdin.read().encode("utf-8")
        compression = None
        for magic, kind in _MAGIC:
            if data.startswith(magic):
                if kind in ("npy", "parquet"):
                    return cls(kind, name, "", data=data)
                compression = kind
        if compression is not None:
            try:
                data = importlib.import_module(compression).decompress(data)
            except (OSError, EOFError, ValueError) as e:
                raise CommandError(
                    f"{name} is not readable {compression} data: {_one_line(e)}"
                ) from None
        return cls("text", name, "", data=data)

    def binary(self) -> BinaryIO:
        """A fresh binary stream over the (decompressed) bytes."""
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None  # a _Source without data was opened from a path
        if self.compression is not None:
            return importlib.import_module(self.compression).open(self.path, "rb")
        return open(self.path, "rb")  # noqa: SIM115 (the caller closes it)

    def text(self) -> TextIO:
        # utf-8-sig: a byte order mark (Excel's CSV) is not part of the first value.
        return io.TextIOWrapper(self.binary(), encoding="utf-8-sig", newline="")

    def size_hint(self) -> int | None:
        """Bytes of text to read, when known without reading them."""
        if self.data is not None:
            return len(self.data)
        if self.compression is None and self.path is not None:
            return self.path.stat().st_size
        return None


def _os_reason(e: OSError) -> str:
    return e.strerror or _one_line(e)


def _pyarrow() -> Any:
    """pyarrow, or None when it is not installed (tests replace this)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.csv  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return None
    return sys.modules["pyarrow"]


def _parse_columns(text: str) -> list[str]:
    """``--columns`` as a list of tokens (names, positions or ranges)."""
    tokens = [t.strip() for t in text.split(",")]
    if not tokens or any(not t for t in tokens):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated column names, 0-based positions or start:stop "
            f"ranges; got {text!r}"
        )
    return tokens


def _resolve_columns(
    spec: Sequence[str], names: Sequence[str] | None, width: int, name: str
) -> list[int]:
    """0-based positions of the columns `spec` names (see ``read_table``)."""
    stripped = [n.strip() for n in names] if names is not None else None
    out: list[int] = []
    for token in spec:
        if stripped is not None and token in stripped:
            if stripped.count(token) > 1:
                raise CommandError(f"--columns {token!r}: {name} has several columns named so.")
            out.append(stripped.index(token))
            continue
        match = re.fullmatch(r"(-?\d+)?(:)?(-?\d+)?", token)
        if token and match and (match.group(1) or match.group(2)):
            if match.group(2):
                start = int(match.group(1)) if match.group(1) else None
                stop = int(match.group(3)) if match.group(3) else None
                picked = list(range(width))[start:stop]
                if not picked:
                    raise CommandError(
                        f"--columns {token!r} picks no column of {name}, which has {width}."
                    )
                out.extend(picked)
                continue
            i = int(match.group(1))
            if not -width <= i < width:
                raise CommandError(
                    f"--columns {token!r}: {name} has {width} columns (positions 0 to {width - 1})."
                )
            out.append(i % width)
            continue
        if stripped is None:
            raise CommandError(
                f"--columns {token!r}: {name} has no column names; give 0-based positions."
            )
        shown = ", ".join(repr(n) for n in stripped[:20]) + (", ..." if width > 20 else "")
        raise CommandError(f"--columns {token!r}: {name} has no such column; it has {shown}.")
    if len(set(out)) != len(out):
        raise CommandError(f"--columns {','.join(spec)!r} names a column twice.")
    return out


def _pick(names: Sequence[str] | None, columns: Sequence[int]) -> list[str] | None:
    return None if names is None else [names[i].strip() for i in columns]


@dataclasses.dataclass(frozen=True)
class _ModelColumns:
    """The columns a trained model was fitted on: by its feature names when the file
    has names, else by the fit's --columns, else the default."""

    names: Sequence[str] | None
    spec: Sequence[str] | None


def _choose_columns(
    spec: Sequence[str] | _ModelColumns | None,
    names: Sequence[str] | None,
    width: int,
    name: str,
) -> list[int] | None:
    """Positions chosen by --columns or the model (None: the reader's default)."""
    if isinstance(spec, _ModelColumns):
        if spec.names is not None and names is not None:
            return _resolve_columns(spec.names, names, width, name)
        spec = spec.spec
    return None if spec is None else _resolve_columns(spec, names, width, name)


def _read_npy(source: _Source, spec: Sequence[str] | _ModelColumns | None) -> Table:
    name = source.name
    try:
        if source.data is not None:
            arr = np.load(io.BytesIO(source.data), allow_pickle=False)
        else:
            assert source.path is not None  # a _Source without data was opened from a path
            arr = np.load(source.path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise CommandError(f"{name} is not a readable .npy array: {_one_line(e)}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise CommandError(f"{name} must hold numbers; got dtype {dtype}.")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise CommandError(f"{name} must be 2-D (rows x features); got shape {arr.shape}.")
    width = arr.shape[1]
    columns = _choose_columns(spec, None, width, name) or list(range(width))
    if columns != list(range(width)):
        contiguous = columns == list(range(columns[0], columns[0] + len(columns)))
        # A contiguous range stays a memory-mapped view; other picks are copied.
        arr = arr[:, columns[0] : columns[0] + len(columns)] if contiguous else arr[:, columns]
    return Table(arr, None, columns, name)


def _read_parquet(source: _Source, spec: Sequence[str] | _ModelColumns | None) -> Table:
    name = source.name
    pa = _pyarrow()
    if pa is None:
        raise CommandError(
            f"{name}: reading Parquet needs pyarrow; install it with "
            "`pip install 'jaxkmeans[parquet]'`."
        )
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(
            pa.BufferReader(source.data) if source.data is not None else str(source.path)
        )
    except (pa.ArrowException, OSError) as e:
        raise CommandError(f"{name} is not a readable Parquet file: {_one_line(e)}") from None
    schema = file.schema_arrow
    names = list(schema.names)
    columns = _choose_columns(spec, names, len(names), name)
    if columns is None:  # every column but those pandas stored its index in
        meta = schema.pandas_metadata or {}
        index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
        columns = [i for i, n in enumerate(names) if n not in index]
    picked = [names[i] for i in columns]
    for i, column in zip(columns, picked, strict=True):
        kind = schema.field(i).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and not (
            pa.types.is_boolean(kind) or pa.types.is_decimal(kind)
        ):
            raise CommandError(
                f"{name} column {column!r} holds {kind}, not numbers; choose the feature "
                "columns with --columns."
            )
    if len(set(picked)) != len(picked):
        raise CommandError(f"{name} has several columns named {picked}; rename them.")
    rows = _Rows(len(columns), file.metadata.num_rows)
    try:
        for batch in file.iter_batches(batch_size=READ_BATCH_ROWS, columns=picked):
            block = rows.reserve(batch.num_rows)
            for j, array in enumerate(batch.columns):
                block[:, j] = array.cast(pa.float32(), safe=False).to_numpy(zero_copy_only=False)
    except (pa.ArrowException, OSError) as e:
        raise CommandError(f"{name} could not be read: {_one_line(e)}") from None
    return Table(rows.result(), picked, columns, name)


class _Rows:
    """A float32 (rows, width) array filled block by block (grown when needed)."""

    def __init__(self, width: int, capacity: int):
        self._buf = np.empty((max(int(capacity), 1), width), np.float32)
        self.n = 0

    def reserve(self, m: int) -> np.ndarray:
        """The next `m` rows, to fill in place."""
        need = self.n + m
        if need > len(self._buf):
            grown = np.empty((max(need, int(1.5 * len(self._buf))), self._buf.shape[1]), np.float32)
            grown[: self.n] = self._buf[: self.n]
            self._buf = grown
        block = self._buf[self.n : need]
        self.n = need
        return block

    def result(self) -> np.ndarray:
        if self.n < len(self._buf):
            self._buf.resize((self.n, self._buf.shape[1]), refcheck=False)  # realloc: shrinks
        return self._buf


# A number as the parsers take it: decimal, optional exponent, nan, inf.
_NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE)
# Lines read to find the header and the first data row.
_SNIFF_LINES = 1000


@dataclasses.dataclass(frozen=True)
class _TextLayout:
    delimiter: str | None  # None: runs of whitespace
    skip: int  # physical lines before the data (comments, blank lines, the header)
    header: list[str] | None
    width: int  # values per row
    line_bytes: float  # mean bytes per data line (of the lines looked at)


def _split(line: str, delimiter: str | None) -> list[str]:
    """The values of one text line, unquoted and stripped."""
    if delimiter is None:
        fields = line.split()
    else:
        fields = next(csv.reader([line], delimiter=delimiter, quotechar='"'))
    return [f.strip().strip('"').strip() for f in fields]


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def _delimiter_option(text: str | None) -> str | None | Literal[False]:
    """--delimiter: a character, None for whitespace, False when not given."""
    if text is None:
        return False
    if text.lower() == "whitespace":
        return None
    if text.lower() in ("\\t", "tab"):
        return "\t"
    return text


def _sniff_text(source: _Source, delimiter: str | None) -> _TextLayout:
    name = source.name
    given = _delimiter_option(delimiter)
    skip = 0
    first: list[str] | None = None
    header: list[str] | None = None
    chosen: str | None = None
    lengths: list[int] = []
    try:
        with source.text() as f:
            for number, line in enumerate(f, start=1):
                if number > _SNIFF_LINES and first is not None:
                    break
                text = line.strip()
                if not text or text.startswith("#"):
                    if first is None:
                        skip = number
                    continue
                if first is None:
                    if given is not False:
                        chosen = given
                    elif source.suffix == ".tsv":
                        chosen = "\t"
                    else:
                        chosen = next((d for d in ",\t;" if d in text), None)
                        if chosen is None and len(text.split()) == 1:
                            chosen = ","  # one column: the fast reader can take it
                    try:
                        fields = _split(text, chosen)
                    except csv.Error as e:
                        raise CommandError(f"{name} line {number}: {_one_line(e)}") from None
                    first = fields
                    if header is None and _is_header(fields):
                        header, skip = fields, number
                        first = None
                        continue
                    skip = number - 1
                lengths.append(len(line.encode("utf-8")))
    except UnicodeDecodeError:
        raise CommandError(f"{name} is not a text file of numbers (not UTF-8).") from None
    except OSError as e:
        raise CommandError(f"{name}: {_os_reason(e)}.") from None
    if first is None:
        raise CommandError(f"{name} has no data rows.")
    width = len(header) if header is not None else len(first)
    return _TextLayout(chosen, skip, header, width, sum(lengths) / max(len(lengths), 1))


def _is_header(fields: Sequence[str]) -> bool:
    """A first row that is not numbers: any value that is not a number, or the header
    pandas writes for integer column names with the index (",0,1,2")."""
    if any(f and not _is_number(f) for f in fields):
        return True
    return (
        len(fields) > 1
        and fields[0] == ""
        and fields[1:] == [str(i) for i in range(len(fields) - 1)]
    )


def _is_pandas_index(header: Sequence[str] | None) -> bool:
    if not header:
        return False
    return header[0] == "" or re.fullmatch(r"Unnamed: \d+", header[0]) is not None


def _read_text(
    source: _Source, spec: Sequence[str] | _ModelColumns | None, delimiter: str | None
) -> Table:
    name = source.name
    layout = _sniff_text(source, delimiter)
    columns = _choose_columns(spec, layout.header, layout.width, name)
    if (
        columns is None
        and layout.header is not None
        and _is_pandas_index(layout.header)
        and layout.width > 1
    ):
        columns = list(range(1, layout.width))
        _note(
            f"{name}: the first column has no name ({layout.header[0]!r}), as the index "
            "pandas' to_csv writes; it is not used as a feature (--columns chooses the "
            "features)."
        )
    elif columns is None:
        columns = list(range(layout.width))
    size = source.size_hint()
    capacity = int(1.05 * size / max(layout.line_bytes, 1.0)) + 16 if size else READ_BATCH_ROWS
    rows = _Rows(len(columns), capacity)
    pa = _pyarrow() if layout.delimiter is not None else None
    if pa is not None:
        try:
            _fill_text_arrow(pa, source, layout, columns, rows)
        except _NotForArrow:
            # Something pyarrow cannot parse that is no error (a "#" comment line with as
            # many fields as a row): numpy's reader, which takes it, reads the file again.
            rows = _Rows(len(columns), capacity)
            _fill_text_numpy(source, layout, columns, rows)
    else:
        _fill_text_numpy(source, layout, columns, rows)
    return Table(rows.result(), _pick(layout.header, columns), columns, name)


class _NotForArrow(Exception):
    """pyarrow's CSV reader failed on a file with no bad line."""


def _fill_text_arrow(
    pa: Any, source: _Source, layout: _TextLayout, columns: list[int], rows: _Rows
) -> None:
    """Fills `rows` with pyarrow's streaming CSV reader (blocks parsed on several threads)."""
    import pyarrow.csv as pacsv

    def skip_comment(row: Any) -> str:
        return "skip" if (row.text or "").lstrip().startswith("#") else "error"

    names = [f"f{i}" for i in range(layout.width)]
    picked = [names[i] for i in columns]
    if source.data is not None:
        stream = pa.BufferReader(source.data)
    elif source.compression in (None, "gzip", "bz2"):
        stream = str(source.path)  # pyarrow opens it (and decompresses by the suffix)
    else:  # xz: decompressed by Python
        stream = pa.PythonFile(source.binary(), mode="r")
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(
                skip_rows=layout.skip, column_names=names, block_size=ARROW_BLOCK_BYTES
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=layout.delimiter, quote_char='"', invalid_row_handler=skip_comment
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=picked,
                column_types={n: pa.float32() for n in picked},
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            block = rows.reserve(batch.num_rows)
            for j, array in enumerate(batch.columns):
                if array.null_count:
                    _explain_text(source, layout, columns, after_rows=rows.n - batch.num_rows)
                block[:, j] = array.to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        _explain_text(source, layout, columns, after_rows=0)
        raise _NotForArrow from None  # no line is wrong
    except OSError as e:
        raise CommandError(f"{source.name}: {_os_reason(e)}.") from None


def _fill_text_numpy(source: _Source, layout: _TextLayout, columns: list[int], rows: _Rows):
    """Fills `rows` with numpy's text reader, READ_BATCH_ROWS lines at a time."""
    usecols = None if columns == list(range(layout.width)) else columns
    try:
        with source.text() as f:
            lines = iter(f)
            for _ in range(layout.skip):
                next(lines, None)
            first_line = layout.skip + 1
            while chunk := list(itertools.islice(lines, READ_BATCH_ROWS)):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # "input contained no data"
                        arr = np.loadtxt(
                            chunk,
                            dtype=np.float32,
                            delimiter=layout.delimiter,
                            comments="#",
                            usecols=usecols,
                            quotechar='"' if layout.delimiter is not None else None,
                            ndmin=2,
                        )
                except ValueError as e:
                    _explain_lines(source.name, layout, columns, enumerate(chunk, first_line))
                    raise CommandError(
                        f"{source.name} could not be read as numbers: {_one_line(e)}"
                    ) from None
                if arr.shape[0]:
                    if arr.shape[1] != len(columns):  # a block of rows of another width
                        _explain_lines(source.name, layout, columns, enumerate(chunk, first_line))
                        raise CommandError(
                            f"{source.name} has rows of {arr.shape[1]} values; expected "
                            f"{layout.width}."
                        )
                    rows.reserve(arr.shape[0])[:] = arr
                first_line += len(chunk)
    except UnicodeDecodeError:
        raise CommandError(f"{source.name} is not a text file of numbers (not UTF-8).") from None
    except OSError as e:
        raise CommandError(f"{source.name}: {_os_reason(e)}.") from None


def _explain_text(source: _Source, layout: _TextLayout, columns: list[int], after_rows: int):
    """Raises a CommandError naming the first bad line (the fast reader names none),
    looking at the data rows after the first `after_rows` (already read fine)."""
    with source.text() as f:
        lines = enumerate(f, start=1)
        for _ in range(layout.skip):
            next(lines, None)
        seen = 0

        def data_lines() -> Iterator[tuple[int, str]]:
            nonlocal seen
            for number, line in lines:
                text = line.strip()
                if text and not text.startswith("#"):
                    seen += 1
                    if seen > after_rows:
                        yield number, line

        _explain_lines(source.name, layout, columns, data_lines())


def _explain_lines(
    name: str, layout: _TextLayout, columns: list[int], lines: Iterable[tuple[int, str]]
) -> None:
    """Raises a CommandError for the first line of `lines` that is not a row of numbers."""
    for number, line in lines:
        text = line.split("#", 1)[0].strip() if layout.delimiter is None else line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            values = _split(text, layout.delimiter)
        except csv.Error as e:
            raise CommandError(f"{name} line {number}: {_one_line(e)}") from None
        if len(values) != layout.width:
            raise CommandError(
                f"{name} line {number} has {len(values)} values; expected {layout.width}."
            )
        for i in columns:
            where = f"{name} line {number}, column {i + 1}"
            if layout.header is not None:
                where += f" ({layout.header[i]!r})"
            if values[i] == "":
                raise CommandError(f"{where} is empty (a missing value).")
            if not _is_number(values[i]):
                hint = "; choose the feature columns with --columns" if layout.header else ""
                raise CommandError(f"{where}: {values[i][:40]!r} is not a number{hint}.")


class _Scaler:
    """``--standardize``: rows become ``(x - mean) / scale`` (per feature)."""

    def __init__(self, mean: Sequence[float] | np.ndarray, scale: Sequence[float] | np.ndarray):
        self.mean = np.asarray(mean, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self._mean32 = self.mean.astype(np.float32)
        self._inv32 = (1.0 / self.scale).astype(np.float32)

    @classmethod
    def fit(cls, data: np.ndarray, name: str) -> _Scaler:
        """Mean and standard deviation of every column (population, as scikit-learn's
        StandardScaler; a constant column keeps scale 1), merged batch by batch."""
        n, mean, m2 = 0, np.zeros(data.shape[1]), np.zeros(data.shape[1])
        for batch in _batches(data, name, PREDICT_BATCH)():
            b = batch.astype(np.float64)
            nb, mb = len(b), b.mean(axis=0)
            delta = mb - mean
            total = n + nb
            mean = mean + delta * nb / total
            m2 = m2 + ((b - mb) ** 2).sum(axis=0) + delta**2 * n * nb / total
            n = total
        std = np.sqrt(m2 / max(n, 1))
        return cls(mean, np.where(std > 0, std, 1.0))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return (batch - self._mean32) * self._inv32

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}


def _batches(
    data: np.ndarray,
    name: str,
    batch_size: int | None,
    order: np.ndarray | None = None,
    before_batch: Callable[[], None] | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[], Iterator[np.ndarray]]:
    """An input_fn: every call gives a fresh generator over float32 batches of `data`.

    `order` (a permutation of the rows) is applied batch by batch; `before_batch` runs
    before each batch is handed over (progress reporting); `transform` maps each batch
    (``--standardize``) after it is checked.
    """
    n = data.shape[0]
    size = n if batch_size is None else batch_size

    def input_fn() -> Iterator[np.ndarray]:
        for start in range(0, n, size):
            if before_batch is not None:
                before_batch()
            if order is None:
                rows = np.arange(start, min(start + size, n))
                batch = data[start : start + size]
            else:
                rows = np.sort(order[start : start + size])
                batch = data[rows]
            batch = np.asarray(batch, dtype=np.float32)
            _check_finite(batch, rows, name)
            yield batch if transform is None else transform(batch)

    return input_fn


def _check_finite(batch: np.ndarray, rows: np.ndarray, name: str) -> None:
    finite = np.isfinite(batch).all(axis=1)
    if not finite.all():
        row = int(rows[np.argmin(finite)]) + 1
        raise CommandError(f"{name} has a missing, NaN or inf value (data row {row}).")


def _check_width(data: np.ndarray, name: str, dims: int, model_dir: str) -> None:
    if data.shape[1] != dims:
        raise CommandError(
            f"{name} has {data.shape[1]} columns but the model in {model_dir!r} has "
            f"{dims} features."
        )


# --------------------------------------------------------------------------- model


def _saved_config(model_dir: str) -> dict[str, Any] | None:
    """The config of the newest checkpoint in `model_dir` (None: no checkpoint)."""
    path = pathlib.Path(model_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise CommandError(f"--model-dir {model_dir!r} is not a directory.")
    if not path.exists():
        return None
    ckpt = Checkpointer(path, max_to_keep=None)
    try:
        step = ckpt.latest_step()
        if step is None:
            return None
        config = ckpt.read_config()
    finally:
        ckpt.close()
    if config.get("format") != "jaxkmeans-estimator":
        raise CommandError(f"--model-dir {model_dir!r} does not hold a jaxkmeans.KMeans model.")
    return config


def _saved_step(model_dir: str) -> int | None:
    ckpt = Checkpointer(pathlib.Path(model_dir).expanduser(), max_to_keep=None)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _open_model(model_dir: str) -> tuple[jaxkmeans.KMeans, dict[str, Any]]:
    """The trained KMeans in `model_dir` and its checkpoint config."""
    path = pathlib.Path(model_dir).expanduser()
    if not path.exists():
        raise CommandError(f"--model-dir {model_dir!r} does not exist.")
    config = _saved_config(model_dir)
    if config is None:
        raise CommandError(
            f"--model-dir {model_dir!r} holds no checkpoint; train one with "
            f"`{PROG} fit DATA --num-clusters K --model-dir DIR`."
        )
    model = _resumed_model(
        num_clusters=config["num_clusters"],
        model_dir=path,
        distance_metric=config["distance_metric"],
        use_mini_batch=bool(config.get("use_mini_batch", True)),
        seed=config.get("seed"),
    )
    return model, config


def _resumed_model(resuming: bool = True, **kwargs: Any) -> jaxkmeans.KMeans:
    """KMeans(**kwargs) without the estimator's warnings about start-only settings
    (init, seed) that differ on resume: the CLI reports those itself, naming its own
    options. Other warnings are shown."""
    if not resuming:
        return jaxkmeans.KMeans(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = jaxkmeans.KMeans(**kwargs)
    for w in caught:
        text = str(w.message)
        if "initial_clusters" in text or "seed" in text:
            continue
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return model


def _cli_state(model_dir: str) -> dict[str, Any]:
    """What the CLI wrote beside the checkpoints of `model_dir` ({} when nothing).

    Keys: ``initial_clusters`` (the init when the CLI passed centers from a sample),
    ``columns`` (the --columns of the fit), ``feature_names``, ``standardize``
    (``{"mean": [...], "scale": [...]}``).
    """
    path = pathlib.Path(model_dir).expanduser() / CLI_STATE_FILE
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CommandError(f"--model-dir {model_dir!r}: {_os_reason(e)} ({path.name}).") from None
    except ValueError:
        state = None
    if not isinstance(state, dict):
        # It may hold how to standardize the data: guessing could give wrong clusters.
        raise CommandError(f"--model-dir {model_dir!r}: {path.name} is damaged (not JSON).")
    return state


def _write_cli_state(model_dir: str, state: dict[str, Any]) -> None:
    path = pathlib.Path(model_dir).expanduser() / CLI_STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


class _StateWriter:
    """A saving listener that writes the CLI's state of a new model just before its
    first checkpoint (a model never exists on disk without it)."""

    def __init__(self, model_dir: str, state: dict[str, Any]):
        self._model_dir = model_dir
        self._state = state or None

    def before_save(self, session: Any, global_step: int) -> None:
        if self._state is not None:
            _write_cli_state(self._model_dir, self._state)
            self._state = None


def _mode(mini_batch: bool) -> str:
    return "mini_batch" if mini_batch else "full_batch"


def _losses(model: jaxkmeans.KMeans, mini_batch: bool, rows: int | None) -> dict[str, float]:
    """``loss`` (sum over the last step's rows) and ``mean_loss`` (per row of it)."""
    if not model.global_step:
        return {}
    loss = float(model.get_variable_value("loss"))
    out = {"loss": loss}
    if mini_batch:
        # The estimator's history holds each mini-batch step's loss per row of its batch.
        history = model.loss_history
        if history and history[-1][0] == model.global_step:
            out["mean_loss"] = float(history[-1][1])
    elif rows:
        out["mean_loss"] = loss / rows
    return out


def _converged(model: jaxkmeans.KMeans, mini_batch: bool, tolerance: float) -> float | None:
    """The last step's relative loss change when it is below `tolerance` (the rule the
    estimator stops on: the pass loss in full batch, the smoothed per-row batch loss in
    mini-batch), else None."""
    if tolerance <= 0 or not model.global_step:
        return None
    try:
        loss = float(model.get_variable_value("smoothed_loss" if mini_batch else "loss"))
        prev = float(model.get_variable_value("prev_loss"))
    except ValueError:  # an estimator without these variables: use the history
        history = model.loss_history
        if mini_batch or len(history) < 2:
            return None
        prev, loss = history[-2][1], history[-1][1]
    if not (math.isfinite(loss) and math.isfinite(prev)):
        return None
    change = abs(prev - loss) / (1.0 + abs(prev))
    return change if change < tolerance else None


def _predict_labels(
    model: jaxkmeans.KMeans, data: np.ndarray, name: str, scaler: _Scaler | None = None
) -> np.ndarray:
    out = model.predict(
        _batches(data, name, PREDICT_BATCH, transform=scaler),
        predict_keys=jaxkmeans.CLUSTER_INDEX,
        yield_single_examples=False,
    )
    return np.concatenate([o[jaxkmeans.CLUSTER_INDEX] for o in out]).astype(np.int32)


# --------------------------------------------------------------------------- progress


class _Progress:
    """Training progress: remembers the last completed step seen, and draws a tqdm bar
    on stderr when enabled (``[####      ] step 12/300  loss 1.2e+03  00:02``).

    `update` is called before every batch; it reads the step and the loss (see the module
    docstring) from the estimator at most every `interval` seconds (reading waits for the
    device, so not on every step: a train() hook would read every step's loss).
    """

    def __init__(
        self,
        model: jaxkmeans.KMeans,
        target: int,
        stream: TextIO,
        enabled: bool,
        interval: float = 0.1,
    ):
        self._model = model
        self._start = model.global_step
        self.last_step = self._start  # the last completed step seen
        self._interval = interval
        self._last = -math.inf
        self._loss = "-"
        self._bar = None
        if enabled and target - self._start > 1:
            try:
                from tqdm import tqdm
            except ImportError:  # a dependency, but an old environment may lack it
                _warn("no progress bar: tqdm is not installed (`pip install tqdm`).")
                return

            class Bar(tqdm):
                monitor_interval = 0  # no monitor thread: we redraw on our own clock

            self._bar = Bar(
                total=target,
                initial=self._start,
                file=stream,
                ascii=" #",
                # {desc}, not {postfix}: tqdm puts ", " before a postfix.
                bar_format="[{bar:20}] step {n}/{total}  {desc}  {elapsed}",
                desc="loss -",
                mininterval=0,
                miniters=1,
                dynamic_ncols=False,
            )

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._bar is None or (not force and now - self._last < self._interval):
            return
        self._last = now
        step = self._model.global_step
        self.last_step = max(self.last_step, step)
        if step > self._start:
            self._loss = f"{float(self._model.get_variable_value('loss')):.6g}"
        self._bar.n = step
        self._bar.set_description_str(f"loss {self._loss}", refresh=True)

    def close(self, redraw: bool = True, converged: str | None = None) -> None:
        """Ends the bar with a newline; `converged` (why a tolerance stopped the run) is
        added to its last line."""
        if self._bar is None:
            return
        if redraw:
            self.update(force=True)
        if converged is not None:
            self._bar.set_description_str(
                f"loss {self._loss}  converged: {converged}", refresh=False
            )
        self._bar.close()
        self._bar = None


def _accepts(func: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _run_config(args: argparse.Namespace) -> jaxkmeans.RunConfig:
    """RunConfig from the save options (TF's default: every 600 s)."""
    if args.save_every_steps is not None:
        return jaxkmeans.RunConfig(save_checkpoints_steps=args.save_every_steps)
    if args.save_every_secs is not None:
        if not _accepts(jaxkmeans.RunConfig, "save_checkpoints_secs"):
            raise CommandError(
                "--save-every-secs needs a jaxkmeans.RunConfig with save_checkpoints_secs."
            )
        return jaxkmeans.RunConfig(save_checkpoints_secs=args.save_every_secs)
    return jaxkmeans.RunConfig()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_message(model_dir: str, reached: int, start: int) -> str:
    """What an interrupted fit left in `model_dir`, as one line."""
    saved = _saved_step(model_dir)
    where = str(pathlib.Path(model_dir).expanduser().resolve())
    if saved is None:
        return f"{PROG}: interrupted before the first step completed; nothing saved in {where}."
    if saved >= reached:
        return (
            f"{PROG}: interrupted at step {saved}; saved step {saved} to {where} "
            "(resume with the same command)"
        )
    lost = f"steps {saved + 1}-{reached} were not saved" if saved > start else "nothing new saved"
    return (
        f"{PROG}: interrupted at step {reached}; {where} holds step {saved} ({lost}; "
        "resume with the same command)"
    )


# --------------------------------------------------------------------------- commands


def _warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def _check_resume(
    args: argparse.Namespace, config: dict[str, Any], state: dict[str, Any], dims: int, name: str
) -> tuple[str, int | None]:
    """Checks a fit on an existing model; returns the init and seed it resumes with.

    What defines the model must match (a one-line CommandError otherwise); start-only
    settings given differently are reported as ignored.
    """
    where = f"the model in {args.model_dir!r}"
    fix = "to resume it, or a new --model-dir to start another"
    k = int(config["num_clusters"])
    if args.num_clusters != k:
        raise CommandError(
            f"--num-clusters {args.num_clusters} does not fit {where}, which has "
            f"{k} clusters; use --num-clusters {k} {fix}."
        )
    metric = config["distance_metric"]
    if args.metric != metric:
        raise CommandError(
            f"--metric {args.metric} does not fit {where}, trained with --metric {metric}; "
            f"use --metric {metric} {fix}."
        )
    if int(config["dims"]) != dims:
        raise CommandError(
            f"{name} has {dims} columns but {where} has {config['dims']} features; "
            "use data of that width, or a new --model-dir."
        )
    mini_batch = bool(config.get("use_mini_batch", True))
    if args.mini_batch != mini_batch:
        if args.mini_batch:
            raise CommandError(
                f"--mini-batch does not fit {where}, trained full batch; drop --mini-batch {fix}."
            )
        raise CommandError(
            f"{where} was trained with --mini-batch; add --mini-batch {fix} (full batch "
            "would mix two kinds of steps in one model)."
        )
    standardized = "standardize" in state
    if args.standardize != standardized:
        if args.standardize:
            raise CommandError(
                f"--standardize does not fit {where}, trained on the data as it is; drop "
                f"--standardize {fix}."
            )
        raise CommandError(
            f"{where} was trained with --standardize; add --standardize {fix} (it keeps the "
            "mean and scale of its first fit)."
        )
    step = config.get("global_step")
    at = f"{where} resumes" if step is None else f"{where} resumes at step {step}"
    init = state.get("initial_clusters", config.get("initial_clusters"))
    if args.init is not None and args.init != init:
        started = f"was started with --init {init}" if init in INIT_METHODS else "keeps its centers"
        _warn(
            f"--init {args.init} IGNORED: {at}; it {started} (the init only matters when a "
            "model starts; use a new --model-dir to start another)."
        )
    seed = config.get("seed")
    if args.seed is not None and args.seed != seed:
        _warn(
            f"--seed {args.seed} IGNORED: {at} and keeps its seed {seed} (the seed only "
            "matters when a model starts; use a new --model-dir to start another)."
        )
    return (init if init in INIT_METHODS else jaxkmeans.KMEANS_PLUS_PLUS_INIT), seed


def _sample_init(
    data: np.ndarray,
    name: str,
    k: int,
    init: str,
    metric: str,
    seed: int,
    scaler: _Scaler | None = None,
) -> tuple[np.ndarray, int]:
    """Initial centers by `init` from a uniform random sample of all the rows (seeded,
    standardized by `scaler` if given), and the sample's size."""
    n = data.shape[0]
    m = min(n, max(INIT_SAMPLE_MIN_ROWS, INIT_SAMPLE_ROWS_PER_CLUSTER * k))
    rows = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    sample = np.asarray(data[rows], dtype=np.float32)
    _check_finite(sample, rows, name)
    if scaler is not None:
        sample = scaler(sample)
    # The estimator's split of the seed: the same key as its own init would use.
    _, init_key = jax.random.split(jax.random.PRNGKey(seed))
    centers = jaxkmeans.init_centers(
        init_key, sample, k, init, metric=metric, num_retries=DEFAULT_NUM_RETRIES
    )
    return np.asarray(centers, dtype=np.float32), m


def _model_columns(args: argparse.Namespace, state: dict[str, Any]) -> Any:
    """The columns to read: --columns, else those the model in --model-dir was fit on."""
    if args.columns is not None:
        return args.columns
    if state.get("feature_names") is None and state.get("columns") is None:
        return None
    return _ModelColumns(state.get("feature_names"), state.get("columns"))


def _model_scaler(state: dict[str, Any], model_dir: str) -> _Scaler | None:
    saved = state.get("standardize")
    if saved is None:
        return None
    try:
        return _Scaler(saved["mean"], saved["scale"])
    except (KeyError, TypeError, ValueError):
        raise CommandError(
            f"--model-dir {model_dir!r}: {CLI_STATE_FILE} is damaged (standardize)."
        ) from None


def _check_writable(model_dir: str) -> None:
    """Fails early (before training) when `model_dir` cannot be created or written,
    without creating anything."""
    path = pathlib.Path(model_dir).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        reason = "not a directory" if existing == path else f"{str(existing)!r} is not a directory"
        raise CommandError(f"--model-dir {model_dir!r}: {reason}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"--model-dir {model_dir!r}: permission denied ({str(existing)!r}).")


def _cmd_fit(args: argparse.Namespace) -> int:
    config = _saved_config(args.model_dir)  # None: a new model
    state = _cli_state(args.model_dir) if config is not None else {}
    table = read_table(args.data, columns=_model_columns(args, state), delimiter=args.delimiter)
    data, name = table.array, table.name
    n, d = data.shape
    if config is not None:
        config = dict(config, global_step=_saved_step(args.model_dir))
        init, seed = _check_resume(args, config, state, d, name)
        trained = state.get("feature_names")
        if trained is not None and table.names is not None and table.names != trained:
            raise CommandError(
                f"--columns {','.join(args.columns)!r} picks {table.names} from {name}, but the "
                f"model in {args.model_dir!r} was trained on {trained}; drop --columns to "
                "resume with those, or use a new --model-dir."
            )
        scaler = _model_scaler(state, args.model_dir)
    else:
        _check_writable(args.model_dir)
        init = args.init or jaxkmeans.KMEANS_PLUS_PLUS_INIT
        seed = args.seed if args.seed is not None else secrets.randbits(31)
        scaler = _Scaler.fit(data, name) if args.standardize else None
    mini_batch = args.mini_batch
    batch_size = args.batch_size
    if mini_batch and batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if batch_size is not None:
        batch_size = min(batch_size, n)
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    initial_clusters: Any = init
    sample_rows = None
    if config is None and not mini_batch and batch_size is not None and batch_size < n:
        # Full batch over several batches: the estimator would initialize from the first
        # batch only (it cannot read a stream twice); a file can be, so sample all of it.
        assert seed is not None  # a new model (config is None): the seed was chosen above
        initial_clusters, sample_rows = _sample_init(
            data, name, args.num_clusters, init, args.metric, seed, scaler
        )
    new_state: dict[str, Any] = {}
    if config is None:  # what the CLI must remember about a new model
        if sample_rows is not None:
            new_state["initial_clusters"] = init
        if args.columns is not None:
            new_state["columns"] = list(args.columns)
        if table.names is not None:
            new_state["feature_names"] = table.names
        if scaler is not None:
            new_state["standardize"] = scaler.to_json()
    model = _resumed_model(
        config is not None,
        num_clusters=args.num_clusters,
        model_dir=args.model_dir,
        initial_clusters=initial_clusters,
        distance_metric=args.metric,
        seed=seed,
        use_mini_batch=mini_batch,
        relative_tolerance=tolerance,
        config=_run_config(args),
    )
    max_steps = args.max_steps
    if max_steps is None:
        passes = DEFAULT_MINI_BATCH_PASSES if mini_batch else 1
        per_pass = math.ceil(n / batch_size) if mini_batch else DEFAULT_FULL_BATCH_STEPS
        max_steps = passes * per_pass
    start_step = model.global_step
    converged = _converged(model, mini_batch, tolerance) if start_step < max_steps else None
    if converged is not None:
        sys.stderr.write(
            f"{PROG}: the model in {args.model_dir!r} has already converged at step "
            f"{start_step} (relative loss change {converged:.3g} < --tolerance {tolerance:g}); "
            "nothing to train.\n"
        )
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    progress = _Progress(model, max_steps, sys.stderr, show and converged is None)
    # Mini-batch: batches from one fixed shuffle of the rows (seeded, so that a resumed
    # run sees the same batches); full batch: the rows in file order.
    order = None
    if mini_batch:
        order = np.random.default_rng(model.params["seed"]).permutation(n)
    input_fn = _batches(data, name, batch_size, order, progress.update, scaler)
    t0 = time.perf_counter()
    try:
        if converged is None and start_step < max_steps:
            try:
                model.train(
                    input_fn,
                    max_steps=max_steps,
                    saving_listeners=[_StateWriter(args.model_dir, new_state)],
                )
            except OSError as e:  # writing checkpoints (reading DATA is done)
                raise CommandError(f"--model-dir {args.model_dir!r}: {_os_reason(e)}.") from None
            except CheckpointError as e:
                raise CommandError(f"--model-dir {args.model_dir!r}: {_one_line(e)}") from None
        step = model.global_step
        stopped = "max_steps" if step >= max_steps else "tolerance"
        why = None
        if stopped == "tolerance" and step > start_step:
            change = _converged(model, mini_batch, tolerance)
            why = "relative loss change " + (
                f"{change:.3g} < tolerance {tolerance:g}" if change is not None else "small"
            )
        progress.close(converged=why)
        seconds = time.perf_counter() - t0
        rows = n if step > start_step else (config or {}).get("rows_per_pass")
        summary = {
            "model_dir": model.model_dir,
            "num_clusters": args.num_clusters,
            "dims": d,
            "rows": n,
            "features": table.names,
            "metric": args.metric,
            "mode": _mode(mini_batch),
            "init": init,
            "init_sample_rows": sample_rows,
            "mini_batch": mini_batch,
            "batch_size": batch_size,
            "standardize": scaler is not None,
            "seed": model.params["seed"],
            "global_step": step,
            "steps_run": step - start_step,
            "max_steps": max_steps,
            "tolerance": tolerance,
            "stopped": stopped,
            **_losses(model, mini_batch, rows),
            "score": model.score(_batches(data, name, PREDICT_BATCH, transform=scaler)),
            "seconds": round(seconds, 3),
        }
    except KeyboardInterrupt:
        progress.close(redraw=False)
        reached = max(progress.last_step, model.global_step)
        sys.stdout.flush()
        sys.stderr.write(_interrupted_message(args.model_dir, reached, start_step) + "\n")
        return 130
    except BaseException:
        progress.close(redraw=False)
        raise
    print(json.dumps(summary))
    return 0


def _open_model_and_data(
    args: argparse.Namespace,
) -> tuple[jaxkmeans.KMeans, dict[str, Any], Table, _Scaler | None]:
    """predict / plot: the model, its config, DATA read as the model was fit on, and the
    model's standardization."""
    model, config = _open_model(args.model_dir)
    state = _cli_state(args.model_dir)
    table = read_table(args.data, columns=_model_columns(args, state), delimiter=args.delimiter)
    _check_width(table.array, table.name, int(config["dims"]), args.model_dir)
    return model, config, table, _model_scaler(state, args.model_dir)


@contextlib.contextmanager
def _writing(flag: str, path: str) -> Iterator[None]:
    """OS errors while writing `path` name the option that gave it."""
    try:
        yield
    except OSError as e:
        raise CommandError(f"{flag} {path!r}: {_os_reason(e)}.") from None


def _cmd_predict(args: argparse.Namespace) -> int:
    model, _, table, scaler = _open_model_and_data(args)
    labels = _predict_labels(model, table.array, table.name, scaler)
    if args.output is None or args.output == STDIN:
        sys.stdout.write("".join(f"{i}\n" for i in labels.tolist()))
        sys.stdout.flush()
    elif args.output.lower().endswith(".npy"):
        with _writing("--output", args.output):
            np.save(args.output, labels)
    else:
        with _writing("--output", args.output), open(args.output, "w") as f:
            f.write("".join(f"{i}\n" for i in labels.tolist()))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    model, config = _open_model(args.model_dir)
    state = _cli_state(args.model_dir)
    mini_batch = bool(config.get("use_mini_batch", True))
    history = [[int(s), float(v)] for s, v in model.loss_history]
    shown = history if args.history else history[-INFO_HISTORY:]
    init = state.get("initial_clusters", config.get("initial_clusters"))
    info = {
        "model_dir": model.model_dir,
        "num_clusters": int(config["num_clusters"]),
        "dims": int(config["dims"]),
        "features": state.get("feature_names"),
        "columns": state.get("columns"),
        "metric": config["distance_metric"],
        "mode": _mode(mini_batch),
        "global_step": model.global_step,
        **_losses(model, mini_batch, config.get("rows_per_pass")),
        # Full batch: each step's loss; mini-batch: each step's mean_loss (per batch row).
        ("mean_loss_history" if mini_batch else "loss_history"): shown,
        "history_length": len(history),
        "init": init,
        "seed": config.get("seed"),
        "tolerance": config.get("relative_tolerance"),
        # Centers are in the standardized space: x -> (x - mean) / scale.
        "standardize": state.get("standardize"),
    }
    if args.centers:
        info["cluster_centers"] = model.cluster_centers().tolist()
    print(json.dumps(info))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    model, config = _open_model(args.model_dir)
    state = _cli_state(args.model_dir)
    with _writing("--output", args.output):
        path = model.export_saved_model(args.output)
    standardize = state.get("standardize")
    if standardize is not None:
        _warn(
            "the model was trained with --standardize: the export takes standardized rows, "
            "(x - mean) / scale, with the mean and scale in the summary's 'standardize'."
        )
    print(
        json.dumps(
            {
                "path": path,
                "num_clusters": int(config["num_clusters"]),
                "dims": int(config["dims"]),
                "metric": config["distance_metric"],
                "global_step": model.global_step,
                "standardize": standardize,
            }
        )
    )
    return 0


def _project_2d(
    points: np.ndarray, centers: np.ndarray, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """Points and centers in 2-D: as they are for d <= 2, else on the points' first two
    principal axes (numpy SVD of the centered points). Also returns axis labels (the
    feature `names` when given)."""
    d = points.shape[1]
    label = [names[i] if names else f"feature {i}" for i in range(min(d, 2))]
    if d == 1:
        return (
            np.column_stack([points[:, 0], np.zeros(len(points))]),
            np.column_stack([centers[:, 0], np.zeros(len(centers))]),
            (label[0], ""),
        )
    if d == 2:
        return points, centers, (label[0], label[1])
    mean = points.mean(axis=0)
    _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
    share = 100 * s**2 / max(float(np.sum(s**2)), 1e-30)
    axes = vt[:2].T
    labels = (f"PC1 ({share[0]:.0f}% of variance)", f"PC2 ({share[1]:.0f}% of variance)")
    return (points - mean) @ axes, (centers - mean) @ axes, labels


def _cmd_plot(args: argparse.Namespace) -> int:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise CommandError(
            f"`{PROG} plot` needs matplotlib ({_one_line(e)}); install it with "
            "`pip install 'jaxkmeans[plot]'`."
        ) from None
    # The image format from the suffix (matplotlib's rule: none is PNG).
    suffix = pathlib.Path(args.output).suffix.lower()
    image_format = suffix[1:] or "png"
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if image_format not in formats:
        raise CommandError(
            f"--output {args.output!r}: unknown image format {suffix!r}; use one of "
            + ", ".join(f".{f}" for f in sorted(formats))
            + "."
        )
    model, config, table, scaler = _open_model_and_data(args)
    data, name = table.array, table.name
    n = data.shape[0]
    shown: np.ndarray
    if n > PLOT_MAX_POINTS:
        rows = np.sort(np.random.default_rng(0).choice(n, PLOT_MAX_POINTS, replace=False))
        shown = np.asarray(data[rows], np.float32)
    else:
        shown = np.asarray(data, np.float32)
    labels = _predict_labels(model, shown, name, scaler)
    if scaler is not None:  # where the centers are
        shown = scaler(shown)
    centers = model.cluster_centers()
    metric = config["distance_metric"]
    if metric == jaxkmeans.COSINE_DISTANCE:  # spherical k-means: compare directions
        norms = np.linalg.norm(shown, axis=1, keepdims=True)
        shown = shown / np.where(norms > 0, norms, 1.0)
    xy, cxy, (xlabel, ylabel) = _project_2d(
        shown.astype(np.float64), centers.astype(np.float64), table.names
    )
    if scaler is not None:
        xlabel, ylabel = (f"{label} (standardized)" if label else "" for label in (xlabel, ylabel))
    k = centers.shape[0]

    fig = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    ax, ax_loss = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    cmap = "tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, vmin=0, vmax=max(k - 1, 1), s=6)
    ax.scatter(
        cxy[:, 0], cxy[:, 1], marker="X", s=120, c="black", edgecolors="white", linewidths=1.5
    )
    title = f"k={k}, {metric}, step {model.global_step}"
    if len(shown) < n:
        title += f" ({len(shown)} of {n} points)"
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)

    history = np.asarray(model.loss_history, dtype=np.float64).reshape(-1, 2)
    if len(history):
        ax_loss.plot(history[:, 0], history[:, 1], marker="." if len(history) < 50 else None)
        ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
        if np.all(history[:, 1] > 0) and history[:, 1].max() > 10 * history[:, 1].min():
            ax_loss.set_yscale("log")
    else:
        ax_loss.text(0.5, 0.5, "no loss history", ha="center", va="center")
    if config.get("use_mini_batch"):
        what, per = "mean_loss", "per row of the step's batch"
    else:
        what, per = "loss", "sum over all rows"
    ax_loss.set_title(f"{what} per step ({per})")
    ax_loss.set_xlabel("global step")
    ax_loss.set_ylabel(what)
    fig.tight_layout()
    with _writing("--output", args.output):
        fig.savefig(args.output, format=image_format, dpi=PLOT_DPI)
    print(json.dumps({"output": str(args.output), "points": len(shown), "num_clusters": k}))
    return 0


def _cmd_show_config(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(_config.show_config(mode="dicts"), indent=2, default=str))
    else:
        _config.show_config()
    return 0


# --------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage errors exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an int >= {minimum}; got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}; got {value}")
        return value

    return parse


def _delimiter_arg(text: str) -> str:
    if len(text) == 1 or text.lower() in ("\\t", "tab", "whitespace"):
        return text
    raise argparse.ArgumentTypeError(f"expected one character, 'tab' or 'whitespace'; got {text!r}")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxkmeans`` command."""
    parser = _Parser(
        prog=PROG,
        description="k-means clustering in JAX: train, inspect, predict, export, plot.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {jaxkmeans.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_help = (
        "- (stdin), .npy, .parquet / .pq (needs pyarrow), or .csv / .tsv / .txt of numbers "
        "(also .gz, .bz2, .xz; a header row is detected)"
    )

    def add_data(p: argparse.ArgumentParser, model: bool) -> None:
        p.add_argument("data", metavar="DATA", help=data_help)
        p.add_argument(
            "--columns",
            type=_parse_columns,
            metavar="COLS",
            help="the feature columns: names, 0-based positions or start:stop ranges, comma "
            "separated (default: all, but the unnamed index column pandas' to_csv writes"
            + ("; with a model: the columns it was fit on)" if model else ")"),
        )
        p.add_argument(
            "--delimiter",
            type=_delimiter_arg,
            metavar="D",
            help="text files: one character, tab, or whitespace (default: tab for .tsv, else "
            "a comma, tab or semicolon if the first row has one, else whitespace)",
        )

    fit = sub.add_parser("fit", help="train a model on DATA, saving checkpoints in --model-dir")
    add_data(fit, model=False)
    fit.add_argument("--num-clusters", "-k", type=_int_at_least(1), required=True, metavar="K")
    fit.add_argument(
        "--model-dir", required=True, metavar="DIR", help="checkpoints (resumed if present)"
    )
    fit.add_argument("--metric", choices=METRICS, default=jaxkmeans.SQUARED_EUCLIDEAN_DISTANCE)
    fit.add_argument(
        "--init",
        choices=tuple(INIT_METHODS),
        metavar="NAME",
        help=f"one of {', '.join(INIT_METHODS)} (default: {jaxkmeans.KMEANS_PLUS_PLUS_INIT}; "
        "ignored when resuming)",
    )
    fit.add_argument("--mini-batch", action="store_true", help="mini-batch steps (one batch each)")
    fit.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        metavar="B",
        help=f"rows per batch (mini-batch default {DEFAULT_BATCH_SIZE}; full batch: all rows "
        "in one batch unless given, statistics are summed over the batches)",
    )
    fit.add_argument(
        "--max-steps",
        type=_int_at_least(1),
        metavar="N",
        help=f"train until global_step N (default: {DEFAULT_FULL_BATCH_STEPS} full-batch "
        f"steps, or {DEFAULT_MINI_BATCH_PASSES} passes of mini-batches)",
    )
    fit.add_argument(
        "--tolerance",
        type=_non_negative_float,
        metavar="T",
        help="stop once |prev - loss| / (1 + |prev|) < T (default: "
        f"{DEFAULT_TOLERANCE}; 0 never stops early)",
    )
    fit.add_argument(
        "--seed", type=_int_at_least(0), metavar="S", help="random seed (ignored when resuming)"
    )
    save = fit.add_mutually_exclusive_group()
    save.add_argument(
        "--save-every-secs",
        type=_int_at_least(1),
        metavar="S",
        help="save a checkpoint every S seconds of training (default: 600)",
    )
    save.add_argument(
        "--save-every-steps",
        type=_int_at_least(1),
        metavar="N",
        help="save a checkpoint every N steps instead",
    )
    fit.add_argument(
        "--standardize",
        action="store_true",
        help="center and scale every feature to mean 0, variance 1 (the mean and scale are "
        "kept with the model; predict and plot apply them)",
    )
    fit.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    fit.set_defaults(run=_cmd_fit)

    predict = sub.add_parser("predict", help="cluster index of every row of DATA")
    add_data(predict, model=True)
    predict.add_argument("--model-dir", required=True, metavar="DIR")
    predict.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="text, one index per line (.npy: int32 array); default stdout",
    )
    predict.set_defaults(run=_cmd_predict)

    info = sub.add_parser("info", help="the model as JSON")
    info.add_argument("--model-dir", required=True, metavar="DIR")
    info.add_argument("--centers", action="store_true", help="include the cluster centers")
    info.add_argument(
        "--history",
        action="store_true",
        help=f"the whole loss history (default: the last {INFO_HISTORY} steps)",
    )
    info.set_defaults(run=_cmd_info)

    export = sub.add_parser("export", help="write a self-contained serving artifact")
    export.add_argument("--model-dir", required=True, metavar="DIR")
    export.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="base directory of the export"
    )
    export.set_defaults(run=_cmd_export)

    plot = sub.add_parser(
        "plot", help="image (PNG, PDF, SVG) of the clusters and the loss (needs matplotlib)"
    )
    add_data(plot, model=True)
    plot.add_argument("--model-dir", required=True, metavar="DIR")
    plot.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="FILE",
        help="the image; its format from the suffix (.png, .pdf, .svg, ...)",
    )
    plot.set_defaults(run=_cmd_plot)

    show = sub.add_parser(
        "show-config",
        help="versions, devices, native kernel status and compile cache (for bug reports)",
    )
    show.add_argument("--json", action="store_true", help="print a JSON object instead")
    show.set_defaults(run=_cmd_show_config)
    return parser


# --------------------------------------------------------------------------- entry point


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"{PROG}: warning: {_one_line(message)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 on success).

    Run as the program (`argv` None), an interrupted command ends the process at once
    with status 130 once it has said what was saved: an interrupt that lands while JAX
    compiles or dispatches (the first step) could otherwise crash the interpreter's
    teardown (a segmentation fault, status 139) after the checkpoint is on disk.
    """
    status = _main(argv)
    if argv is None and status == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    return status


def _is_user_error(e: BaseException) -> bool:
    """Whether `e` reports a mistake in the command or its input (one line on stderr).

    User errors are the CLI's own checks (:class:`CommandError`), OS errors (missing
    files, permissions, a full disk: the CLI formats their message), and ValueError /
    TypeError raised by the library's argument checks: the innermost frame is a
    ``raise`` statement (its bytecode, so edited or missing sources cannot change the
    answer) in a jaxkmeans module other than the CLI itself (the checks live in
    ``_validation.py`` and at the front of estimator, checkpoint, fitting, ...).
    Anything else is an internal error and keeps its traceback: the same types raised
    inside JAX or numpy, by an operation that fails in library code (not a ``raise``),
    or anywhere in this module, whose own checks raise CommandError.
    """
    if isinstance(e, CommandError | OSError):
        return True
    if not isinstance(e, ValueError | TypeError):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    filename = os.path.abspath(code.co_filename)
    package = os.path.dirname(os.path.abspath(__file__))
    if not filename.startswith(package + os.sep) or filename in _CLI_FILES:
        return False
    # The instruction that raised: a `raise` statement, not a failing call or operation.
    return any(
        i.offset == tb.tb_lasti and i.opname == "RAISE_VARARGS" for i in dis.get_instructions(code)
    )


# The CLI's own modules: a ValueError / TypeError raised there is a bug, not a check.
_CLI_FILES = frozenset(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    for name in ("cli.py", "__main__.py")
)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _config.use_default_compilation_cache()
    saved_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with _sigterm_as_interrupt():
            return args.run(args)
    except (CommandError, ValueError, TypeError, OSError) as e:
        if not _is_user_error(e):
            raise  # a bug, not a mistake in the command: the traceback is for a report
        if isinstance(e, BrokenPipeError):
            # The reader went away (`... | head`): stop quietly, as other tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: error: {_one_line(e)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    finally:
        warnings.showwarning = saved_showwarning


if __name__ == "__main__":
    sys.exit(main())
