"""One time cache for a whole Ray cluster.

A named, detached Ray actor (`CacheServer`) holds the index and writes the
Parquet files, as `TimeCache` does, on the disk of the node it is pinned to:
the driver's. Env runners on every node talk to it through `SharedTimeCache`,
which has `TimeCache`'s interface (get / put / flush / close), so a schedule
measured on one node is a cache hit on every other node of the same machine
fingerprint. A call costs about 2 ms, far below a measurement. The actor
outlives a worker node's death and the driver's (so that `--resume` finds it);
the driver stops it at the end of a run, after a last flush.

Ray is imported only here, and only when a shared cache is asked for.
"""
from __future__ import annotations

from typing import List, Optional

from .cache import Key, Measurement, TimeCache

ACTOR_NAME = "mlir_rl_time_cache"
NAMESPACE = "mlir_rl"


class _Server:
    def __init__(self, folder: str, flush_every: int):
        self.cache = TimeCache(folder, flush_every)

    def get(self, key: Key) -> Optional[Measurement]:
        return self.cache.get(key)

    def put(self, m: Measurement) -> None:
        self.cache.put(m)

    def flush(self) -> Optional[str]:
        return self.cache.flush()

    def size(self) -> int:
        return len(self.cache)

    def folder(self) -> str:
        return self.cache.folder

    def where(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()


def start_server(folder: str, flush_every: int = 8, name: str = ACTOR_NAME):
    """Start (or find) the cache actor, pinned to this process's node; returns its handle."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_Server).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
    handle = actor.remote(folder, flush_every)
    ray.get(handle.size.remote())  # started and its files read
    return handle


def stop_server(name: str = ACTOR_NAME) -> Optional[str]:
    """Flush and stop the cache actor; returns the folder the cache is in (None if none ran)."""
    import ray
    try:
        handle = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None
    ray.get(handle.flush.remote())
    folder = ray.get(handle.folder.remote())
    ray.kill(handle)
    return folder


class SharedTimeCache:
    """`TimeCache`'s interface over the cluster's cache actor (found by name)."""

    def __init__(self, name: str = ACTOR_NAME):
        import ray
        self.name = name
        try:
            self._actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            raise RuntimeError(f"no shared time cache named {name!r} is running on this Ray cluster "
                               "(tune_run.py starts it; or call envs.mlir.shared_cache.start_server)") from None
        self.folder = ray.get(self._actor.folder.remote())

    def get(self, key: Key) -> Optional[Measurement]:
        import ray
        return ray.get(self._actor.get.remote(key))

    def put(self, m: Measurement) -> None:
        self._actor.put.remote(m)  # fire and forget: the actor orders calls from one caller

    def flush(self) -> Optional[str]:
        import ray
        return ray.get(self._actor.flush.remote())

    def records(self) -> List[Measurement]:
        raise NotImplementedError("read the Parquet files of the cache folder on the driver's node")

    def __len__(self) -> int:
        import ray
        return ray.get(self._actor.size.remote())

    def close(self) -> None:
        self.flush()
