"""The time cache: every measurement, in a Parquet dataset written with pyarrow.

Keyed by (program hash, schedule text, machine fingerprint).  Records are
buffered and written as *new* files (``part-<time>-<pid>-<rand>.parquet``,
written to a temporary name and renamed, so a reader never sees half a file);
no file is ever rewritten, and `TimeCache.compact` merges small files into a
new one before it removes them.  A killed process loses only its unflushed
buffer.  A corrupt or partial file is reported once and skipped.  Files
written by other processes sharing the folder are picked up on a miss.
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


COMPACT_MAX_ROWS = 200_000
"""Files with at least this many records are left alone by compaction, so that merging
stays proportional to the recent small files, not to the whole cache."""


def read_part(path: str) -> pa.Table:
    """One Parquet file of the cache, in `SCHEMA` (raises if it cannot be read)."""
    return pq.read_table(path).select(_STORED).cast(SCHEMA)


def write_part(folder: str, table: pa.Table) -> str:
    """Write `table` as a new file of the cache; returns its name.

    Written to a temporary name and renamed, so a reader never sees half a file. The
    microsecond stamp orders a process's files by time (a later record wins on reload)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    name = f"part-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    path = os.path.join(folder, name)
    pq.write_table(table, path + ".tmp")
    os.replace(path + ".tmp", path)
    return name


def to_table(rows: List[Measurement]) -> pa.Table:
    return pa.table({name: [getattr(m, name) for m in rows] for name in _STORED}, schema=SCHEMA)


class TimeCache:
    """An append-only Parquet time cache in `folder` (thread-safe).

    `watch`: on a miss, look for files that other processes wrote to the folder (off
    when this object is the folder's only writer, as in the cluster's cache actor).
    `compact_files`: after a flush, merge the small files into one once there are this
    many (0: never; see `compact`)."""

    def __init__(self, folder: str, flush_every: int = 8, watch: bool = True, compact_files: int = 0):
        self.folder = folder
        self.flush_every = flush_every
        self.watch = watch
        self.compact_files = compact_files
        self._index: Dict[Key, Measurement] = {}
        self._buffer: List[Measurement] = []
        self._seen_files: set = set()
        self._rows: Dict[str, int] = {}  # records per file read or written (what compaction may merge)
        self.skipped_files: List[str] = []
        self._lock = threading.Lock()  # index and buffer
        self._io_lock = threading.Lock()  # file writes, so that lookups are not held up by them
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
            try:
                rows = read_part(path).to_pylist()
            except FileNotFoundError:
                continue  # compacted away since the listing: its records are in the merged file
            except Exception as e:  # corrupt, truncated, wrong schema: skip, never fatal
                self._seen_files.add(name)
                self.skipped_files.append(path)
                warnings.warn(f"time cache: skipping unreadable file {path}: {type(e).__name__}: {e}",
                              stacklevel=2)
                continue
            self._seen_files.add(name)
            self._rows[name] = len(rows)
            for r in rows:
                m = Measurement(**r)
                if m.key not in self._index:
                    added += 1
                self._index[m.key] = m
        return added

    def get(self, key: Key) -> Optional[Measurement]:
        with self._lock:
            m = self._index.get(key)
            if m is None and self.watch and self.refresh():
                m = self._index.get(key)
        if m is None:
            return None
        return dataclasses.replace(m, cache_hit=True)

    def put(self, m: Measurement) -> None:
        self.put_many([m])

    def put_many(self, ms: List[Measurement]) -> None:
        with self._lock:
            for m in ms:
                self._index[m.key] = m
            self._buffer.extend(ms)
            full = len(self._buffer) >= self.flush_every
        if full:
            self.flush()

    def flush(self) -> Optional[str]:
        """Write buffered records to a new file; returns its path (None if nothing)."""
        with self._io_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return None
            try:
                name = write_part(self.folder, to_table(rows))
            except BaseException:  # e.g. a full disk: keep the records for the next flush
                with self._lock:
                    self._buffer[:0] = rows
                raise
            with self._lock:
                self._seen_files.add(name)
                self._rows[name] = len(rows)
        merged = self.compact(self.compact_files) if self.compact_files else None
        return merged or os.path.join(self.folder, name)

    def compact(self, min_files: int = 2) -> Optional[str]:
        """Merge the small files this object has read or written (under `COMPACT_MAX_ROWS`
        records) into one, once there are `min_files`; returns the new file's path.

        Every row is kept, in the order a reload applies them. The merged file is in place
        (renamed from a temporary name) before any old file is removed, so a crash at any
        point loses nothing: at worst both are there, and a record read twice is the same."""
        with self._io_lock:
            with self._lock:
                small = sorted(n for n, r in self._rows.items() if r < COMPACT_MAX_ROWS)
            if len(small) < min_files:
                return None
            tables = []
            for n in small:
                try:
                    tables.append(read_part(os.path.join(self.folder, n)))
                except Exception as e:  # gone or damaged since it was read: change nothing now
                    warnings.warn(f"time cache: compaction skipped, {n}: {type(e).__name__}: {e}", stacklevel=2)
                    if isinstance(e, FileNotFoundError):
                        with self._lock:
                            self._rows.pop(n, None)  # not ours to merge any more
                    return None
            table = pa.concat_tables(tables)
            name = write_part(self.folder, table)
            with self._lock:
                self._seen_files.add(name)
                self._rows[name] = table.num_rows
                for n in small:
                    del self._rows[n]
            for n in small:
                try:
                    os.remove(os.path.join(self.folder, n))
                except FileNotFoundError:
                    pass
            return os.path.join(self.folder, name)

    def files(self) -> List[str]:
        """The files this object has read or written that are still in use, oldest first."""
        with self._lock:
            return sorted(self._rows)

    def records(self) -> List[Measurement]:
        with self._lock:
            return list(self._index.values())

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)

