"""The time cache: every measurement, in a Parquet dataset written with pyarrow.

Keyed by (program hash, schedule text, machine fingerprint).  Records are
buffered and written as *new* files (``part-<time>-<pid>-<rand>.parquet``,
written to a temporary name and renamed, so a reader never sees half a file);
no file is ever rewritten.  A killed process loses only its unflushed buffer.
A corrupt or partial file is reported once and skipped.  Files written by other
processes sharing the folder are picked up on a miss.
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime as _dt
import hashlib
import os
import platform
import threading
import uuid
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from .compile import CODEGEN_VERSION

Key = Tuple[str, str, str]


@dataclass(frozen=True)
class Measurement:
    """One measured (program, schedule) on one machine."""

    program_hash: str
    schedule: str
    fingerprint: str
    status: str
    time_s: Optional[float]  # median of the timed runs; None unless the program ran
    compile_s: Optional[float]
    message: str
    date: _dt.datetime
    program_name: str = ""
    threads: int = 0
    max_error: Optional[float] = None
    cache_hit: bool = False  # not stored: set on the copy a lookup returns

    @property
    def key(self) -> Key:
        return (self.program_hash, self.schedule, self.fingerprint)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


SCHEMA = pa.schema([
    ("program_hash", pa.string()), ("schedule", pa.string()), ("fingerprint", pa.string()),
    ("status", pa.string()), ("time_s", pa.float64()), ("compile_s", pa.float64()),
    ("message", pa.string()), ("date", pa.timestamp("us", tz="UTC")), ("program_name", pa.string()),
    ("threads", pa.int32()), ("max_error", pa.float64()),
])
_STORED = [f.name for f in SCHEMA]


def default_cache_dir() -> str:
    """The time cache folder when none is given: $MLIR_RL_CACHE, else ~/.cache/mlir_rl/times."""
    return os.path.expanduser(os.environ.get("MLIR_RL_CACHE") or os.path.join("~", ".cache", "mlir_rl", "times"))


def machine_fingerprint(threads: int, opt_level: int = 3) -> str:
    """What makes times comparable: CPU model and features, threads, compiler version,
    the version of our code generation (`compile.CODEGEN_VERSION`)."""
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = " ".join(sorted(x for x in line.split(":", 1)[1].split()
                                            if x.startswith(("avx", "fma", "sse4"))))
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        mlir = version("torch-mlir")
    except Exception:
        mlir = "unknown"
    raw = f"{cpu}|{flags}|threads={threads}|O{opt_level}|torch-mlir={mlir}|codegen={CODEGEN_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


class TimeCache:
    """An append-only Parquet time cache in `folder` (thread-safe)."""

    def __init__(self, folder: str, flush_every: int = 8):
        self.folder = folder
        self.flush_every = flush_every
        self._index: Dict[Key, Measurement] = {}
        self._buffer: List[Measurement] = []
        self._seen_files: set = set()
        self.skipped_files: List[str] = []
        self._lock = threading.Lock()
        os.makedirs(folder, exist_ok=True)
        self.refresh()
        atexit.register(self.flush)

    def __len__(self) -> int:
        return len(self._index)

    def refresh(self) -> int:
        """Read Parquet files not read yet; returns how many records were added."""
        added = 0
        for name in sorted(os.listdir(self.folder)):
            if not name.endswith(".parquet") or name in self._seen_files:
                continue
            path = os.path.join(self.folder, name)
            self._seen_files.add(name)
            try:
                table = pq.read_table(path)
                rows = table.select(_STORED).to_pylist()
            except Exception as e:  # corrupt, truncated, wrong schema: skip, never fatal
                self.skipped_files.append(path)
                warnings.warn(f"time cache: skipping unreadable file {path}: {type(e).__name__}: {e}",
                              stacklevel=2)
                continue
            for r in rows:
                m = Measurement(**r)
                if m.key not in self._index:
                    added += 1
                self._index[m.key] = m
        return added

    def get(self, key: Key) -> Optional[Measurement]:
        with self._lock:
            m = self._index.get(key)
            if m is None and self.refresh():
                m = self._index.get(key)
        if m is None:
            return None
        return dataclasses.replace(m, cache_hit=True)

    def put(self, m: Measurement) -> None:
        with self._lock:
            self._index[m.key] = m
            self._buffer.append(m)
            full = len(self._buffer) >= self.flush_every
        if full:
            self.flush()

    def flush(self) -> Optional[str]:
        """Write buffered records to a new file; returns its path (None if nothing)."""
        with self._lock:
            if not self._buffer:
                return None
            rows, self._buffer = self._buffer, []
            cols = {name: [getattr(m, name) for m in rows] for name in _STORED}
            table = pa.table(cols, schema=SCHEMA)
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            name = f"part-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            path = os.path.join(self.folder, name)
            tmp = path + ".tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, path)  # atomic: readers never see a partial file
            self._seen_files.add(name)
            return path

    def records(self) -> List[Measurement]:
        with self._lock:
            return list(self._index.values())

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)

