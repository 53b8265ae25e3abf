"""One time cache for a whole Ray cluster.

A named, detached Ray actor (`_Server`) holds the cache in memory and is the
only writer of its folder, on the disk of the node it is pinned to (the
driver's that started it): lookups and appends are served from its index, with
no look at the folder; it writes a new Parquet file every `flush_every`
records or `flush_s` seconds, merges small files into one (`TimeCache.compact`)
and, restarted after a crash (Ray restarts it), reloads every flushed record.
One actor per cache folder: its name comes from the folder's path.

Env runners on every node talk to it through `SharedTimeCache`, which has
`TimeCache`'s interface (get / put / flush / close): a bounded in-process LRU
of hits and own puts answers repeated lookups without a call, and puts go in
batches (every `batch_size` puts or `batch_s` seconds, and at flush), so a
schedule measured on one node is a hit on every other node of the same
machine fingerprint a moment later.

Several runs (Ray jobs) may share the actor: each driver registers
(`start_server`) and leaves (`stop_server`); the actor is stopped when the
last live job leaves, after a flush. A job whose driver died (a `--resume`
will follow, or not) no longer counts; its entries stay flushed on disk.

Ray is imported only here, and only when a shared cache is asked for.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Set

from .cache import Key, Measurement, TimeCache

ACTOR_NAME = "mlir_rl_time_cache"  # prefix; the name ends with a hash of the folder
NAMESPACE = "mlir_rl"
USERS_FILE = "server-users.json"  # beside the Parquet files, so that a restarted actor knows its users

log = logging.getLogger("envs.mlir")


def server_name(folder: str) -> str:
    """The actor's name for a cache folder: every job using that folder finds the same one."""
    path = os.path.abspath(os.path.expanduser(folder))
    return f"{ACTOR_NAME}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def _live_jobs() -> Optional[Set[str]]:
    """Ids of the Ray jobs whose driver is alive (None if the job table cannot be read)."""
    try:
        import ray._private.state
        return {j["JobID"] for j in ray._private.state.jobs() if not j["IsDead"]}
    except Exception:
        log.warning("time cache: cannot read Ray's job table", exc_info=True)
        return None


class _Server:
    def __init__(self, folder: str, flush_every: int, flush_s: float, compact_files: int):
        self.cache = TimeCache(folder, flush_every, watch=False, compact_files=compact_files)
        self.counts = {"gets": 0, "hits": 0, "puts": 0, "batches": 0}
        self._users_path = os.path.join(folder, USERS_FILE)
        self._users: Set[str] = set()
        import ray
        with warnings.catch_warnings():  # Ray's property reads its own deprecated actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            # Restarted after a crash: same users. (A fresh start ignores the file: job ids of
            # an earlier cluster are reused by this one's jobs.)
            try:
                with open(self._users_path) as f:
                    self._users = set(json.load(f)["jobs"])
            except (OSError, ValueError, KeyError):
                pass
        self._closing = False
        # Records that arrive between puts still reach the disk within flush_s.
        self._timer = threading.Thread(target=self._flush_every, args=(flush_s,), daemon=True)
        self._timer.start()

    def _flush_every(self, seconds: float) -> None:
        while True:
            time.sleep(seconds)
            try:
                self.cache.flush()
            except Exception:  # a full disk now may not be full at the next tick
                log.exception("time cache: periodic flush failed")

    def get(self, key: Key) -> Optional[Measurement]:
        m = self.cache.get(key)
        self.counts["gets"] += 1
        self.counts["hits"] += m is not None
        return m

    def put_many(self, ms: List[Measurement]) -> None:
        self.counts["puts"] += len(ms)
        self.counts["batches"] += 1
        self.cache.put_many(ms)

    def flush(self, ms: Optional[List[Measurement]] = None) -> Optional[str]:
        """Add `ms` (a client's last batch: one call, so it cannot overtake) and write."""
        if ms:
            self.put_many(ms)
        return self.cache.flush()

    def compact(self) -> Optional[str]:
        self.cache.flush()
        return self.cache.compact()

    def size(self) -> int:
        return len(self.cache)

    def folder(self) -> str:
        return self.cache.folder

    def stats(self) -> Dict[str, int]:
        return dict(self.counts, records=len(self.cache), files=len(self.cache.files()))

    def where(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def register(self, job: str) -> bool:
        """Count `job` as a user; False once the actor is being stopped (start a new one)."""
        if self._closing:
            return False
        self._users.add(job)
        self._save_users()
        return True

    def unregister(self, job: str) -> int:
        """`job` leaves; returns how many live jobs still use the cache (0: stop it)."""
        self._users.discard(job)
        live = _live_jobs()
        if live is not None:  # unknown liveness: keep every user, never stop another job's cache
            self._users &= live
        self._save_users()
        self._closing = not self._users
        return len(self._users)

    def _save_users(self) -> None:
        tmp = self._users_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"jobs": sorted(self._users)}, f)
        os.replace(tmp, self._users_path)


_STARTED: Set[str] = set()  # the servers this process registered with (what stop_server() leaves)


def start_server(folder: str, flush_every: int = 256, flush_s: float = 30.0, compact_files: int = 16) -> str:
    """Start (pinned to this process's node) or find the cache actor of `folder`, and
    register this job as one of its users; returns the actor's name (for `SharedTimeCache`).

    An actor another job started keeps its node and settings."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    folder = os.path.abspath(os.path.expanduser(folder))
    name = server_name(folder)
    node = ray.get_runtime_context().get_node_id()
    job = ray.get_runtime_context().get_job_id()
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_Server)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        handle = actor.options(
            name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        ).remote(folder, flush_every, flush_s, compact_files)
        if ray.get(handle.register.remote(job)):  # started, its files read, and this job counted
            _STARTED.add(name)
            return name
        time.sleep(0.2)  # its last user is stopping it (a last compaction): the name is free soon
    raise RuntimeError(f"the time cache actor {name} did not stop for a new one to start")


def stop_server(name: Optional[str] = None) -> Optional[str]:
    """This job leaves the cache actor `name` (default: every one it started); the actor
    is flushed, and stopped if no live job uses it any more. Returns the cache folder
    (None if no such actor ran)."""
    import ray
    job = ray.get_runtime_context().get_job_id()
    folder = None
    for n in [name] if name else sorted(_STARTED):
        _STARTED.discard(n)
        try:
            handle = ray.get_actor(n, namespace=NAMESPACE)
        except ValueError:
            continue
        ray.get(handle.flush.remote())
        folder = ray.get(handle.folder.remote())
        if ray.get(handle.unregister.remote(job)) == 0:
            ray.get(handle.compact.remote())  # leave few files behind
            ray.kill(handle)
    return folder


class SharedTimeCache:
    """`TimeCache`'s interface over the cluster's cache actor `name`.

    `local_size`: entries of the in-process LRU (0: every lookup is an actor call);
    `batch_size` / `batch_s`: puts are sent once this many are waiting, or when the
    oldest has waited this long (checked at each get and put), and at flush.
    A miss is never kept locally: another runner may measure it any moment."""

    def __init__(self, name: str, local_size: int = 50_000, batch_size: int = 64, batch_s: float = 2.0):
        import ray
        self.name = name
        self.local_size = local_size
        self.batch_size = batch_size
        self.batch_s = batch_s
        try:
            self._actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            raise RuntimeError(f"no shared time cache named {name!r} is running on this Ray cluster "
                               "(tune_run.py starts it; or call envs.mlir.shared_cache.start_server)") from None
        self.folder = ray.get(self._actor.folder.remote())
        self._local: "OrderedDict[Key, Measurement]" = OrderedDict()
        self._pending: List[Measurement] = []
        self._pending_since = 0.0
        self._lock = threading.Lock()
        self.counts = {"local_hits": 0, "remote_hits": 0, "misses": 0, "puts": 0, "batches": 0}

    def _remember(self, m: Measurement) -> None:
        if self.local_size:
            self._local[m.key] = m
            self._local.move_to_end(m.key)
            while len(self._local) > self.local_size:
                self._local.popitem(last=False)

    def _send(self, force: bool = False) -> None:
        """Send the waiting puts if due (fire and forget: one caller's calls run in order)."""
        if self._pending and (force or len(self._pending) >= self.batch_size
                              or time.monotonic() - self._pending_since >= self.batch_s):
            batch, self._pending = self._pending, []
            self._actor.put_many.remote(batch)
            self.counts["batches"] += 1

    def get(self, key: Key) -> Optional[Measurement]:
        import ray
        with self._lock:
            self._send()
            m = self._local.get(key)
            if m is not None:
                self._local.move_to_end(key)
                self.counts["local_hits"] += 1
                return m if m.cache_hit else dataclasses.replace(m, cache_hit=True)
        m = ray.get(self._actor.get.remote(key))
        with self._lock:
            if m is None:
                self.counts["misses"] += 1
            else:
                self.counts["remote_hits"] += 1
                self._remember(m)
        return m

    def put(self, m: Measurement) -> None:
        with self._lock:
            self._remember(m)
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(m)
            self.counts["puts"] += 1
            self._send()

    def flush(self) -> Optional[str]:
        """Send the waiting puts and have the actor write its buffer; returns the file."""
        import ray
        with self._lock:
            batch, self._pending = self._pending, []
        return ray.get(self._actor.flush.remote(batch))

    def records(self) -> List[Measurement]:
        raise NotImplementedError("read the Parquet files of the cache folder on the driver's node")

    def __len__(self) -> int:
        import ray
        with self._lock:
            self._send(force=True)
        return ray.get(self._actor.size.remote())

    def close(self) -> None:
        self.flush()
