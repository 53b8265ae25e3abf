"""Benchmark suites: Linalg programs from real models' layers, stored as Parquet.

A suite file holds one row per benchmark (columns in `COLUMNS`).  The shipped
ones, `train.parquet` and `eval.parquet` beside this file, are built by
``python -m envs.suites build``; a user's folder of .mlir files becomes a suite
with ``python -m envs.suites from-folder DIR -o FILE.parquet``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
SPLITS = ("train", "eval")

SCHEMA = pa.schema([
    ("name", pa.string()), ("split", pa.string()), ("family", pa.string()), ("source_model", pa.string()),
    ("layer", pa.string()), ("mlir", pa.string()), ("flops", pa.int64()), ("bytes", pa.int64()),
    ("params", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)


@dataclass(frozen=True)
class Benchmark:
    """One program of a suite."""

    name: str
    split: str
    family: str
    source_model: str
    layer: str
    mlir: str
    flops: int
    bytes: int
    params: str  # JSON: the layer's shape and the scaled shape the program uses

    @property
    def shape(self) -> Dict:
        return json.loads(self.params) if self.params else {}


class SuiteError(ValueError):
    """A suite file that cannot be used, named with the reason."""


def suite_path(split: str) -> str:
    """The shipped suite file of a split."""
    if split not in SPLITS:
        raise SuiteError(f"unknown split {split!r}; the shipped splits are {', '.join(SPLITS)}")
    return os.path.join(SUITE_DIR, f"{split}.parquet")


def is_imported(family: str) -> bool:
    """A block imported from PyTorch: a measuring-stick row whichever split holds it."""
    return family.startswith("imported_")


def measuring_stick_rows() -> List[Dict]:
    """The programs evaluation is judged on: the eval split and the imported blocks of every split
    (`bench/vs_pytorch.py`'s rows; no training-side choice, nor the cost model, may learn from them)."""
    rows = pq.read_table(suite_path("eval")).to_pylist()
    return rows + [r for r in pq.read_table(suite_path("train")).to_pylist() if is_imported(r["family"])]


# Window ops' (convolutions', pools') shape traits that decide their schedules most.
WINDOW_TRAITS = ("k", "stride", "layout")


def matched_holdout(trained: Sequence[str], rows: Sequence[Benchmark]) -> List[str]:
    """Validation programs chosen from the training split alone: for each program trained on, in
    order, the held-out program most like it. Most like: the same family; then the most of kernel
    size, stride and layout in common (window ops); then the same source model; then suite order.
    Never a trained program nor an imported block (a measuring-stick row); a family with nothing
    held out gets none; a program two trained ones match is named once."""
    by = {b.name: b for b in rows}
    unknown = [n for n in trained if n not in by]
    if unknown:
        raise SuiteError(f"no benchmark named {', '.join(unknown)}")

    def traits(b: Benchmark) -> Dict:
        layer = b.shape.get("layer")
        return layer if isinstance(layer, dict) and "stride" in layer else {}

    out: List[str] = []
    for n in trained:
        t = by[n]
        cands = [(i, b) for i, b in enumerate(rows)
                 if b.family == t.family and b.name not in trained and not is_imported(b.family)]
        if not cands:
            continue
        want = traits(t)
        _, best = min(cands, key=lambda ib: (-sum(k in want and traits(ib[1]).get(k) == want[k]
                                                  for k in WINDOW_TRAITS),
                                             ib[1].source_model != t.source_model, ib[0]))
        if best.name not in out:
            out.append(best.name)
    return out


def load_suite(path: str, names: Optional[Sequence[str]] = None) -> List[Benchmark]:
    """Benchmarks of a suite file, optionally only those named."""
    if not os.path.exists(path):
        raise SuiteError(f"{path}: no such suite file")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise SuiteError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise SuiteError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    rows = [Benchmark(**{c: r[c] for c in COLUMNS}) for r in table.select(list(COLUMNS)).to_pylist()]
    if not rows:
        raise SuiteError(f"{path}: the suite is empty")
    if names is not None:
        by = {b.name: b for b in rows}
        unknown = [n for n in names if n not in by]
        if unknown:
            raise SuiteError(f"{path}: no benchmark named {', '.join(unknown)}")
        rows = [by[n] for n in names]
    return rows


def write_suite(rows: Sequence[Dict], path: str) -> None:
    """Write rows (dicts with `COLUMNS`) as one Parquet file, atomically."""
    cols = {c: [r[c] for r in rows] for c in COLUMNS}
    tmp = path + ".tmp"
    pq.write_table(pa.table(cols, schema=SCHEMA), tmp, compression="zstd")
    os.replace(tmp, path)
