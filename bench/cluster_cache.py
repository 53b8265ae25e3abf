"""The cluster's time cache under load: lookups and puts per second (a benchmark).

16 clients (Ray actors, as env runners are) share one cache actor
(`envs.mlir.shared_cache`) on a local Ray instance of our own. Phases, each
started by every client at the same moment: puts of its own new records
(ended by a flush), first lookups of another client's records (hits), the
same lookups again (repeated hits), lookups of records nobody put (misses).
Two designs: `new`, as shipped (a per-client LRU in front, puts in batches, a
server that flushes every 256 records and merges files), and `old` (every
lookup and every put one actor call, a file every 8 records, no merging;
unlike the old server, the folder is not listed on a miss, so `old` is, if
anything, flattered).

    python bench/cluster_cache.py [--clients 16] [--keys 300] [--repeat 5]
Writes bench/results/cluster_cache.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DESIGNS = {  # (client options, server options)
    "old": ({"local_size": 0, "batch_size": 1}, {"flush_every": 8, "compact_files": 0}),
    "new": ({}, {}),
}
PHASES = ["put", "hit (first lookup)", "hit (repeated)", "miss"]


class Client:
    """One env runner's cache traffic."""

    def __init__(self, name: str, options: dict):
        from envs.mlir.shared_cache import SharedTimeCache
        self.cache = SharedTimeCache(name, **options)

    def ready(self) -> bool:
        return True

    def run(self, phase: str, me: int, clients: int, keys: int, rounds: int, start: float) -> dict:
        from envs.mlir.cache import Measurement, now
        owner = {"put": me, "miss": -1 - me}.get(phase, (me + 1) % clients)  # hits: the next client's records
        records = [Measurement(program_hash="bench", schedule=f"client {owner} op {i}", fingerprint="fp",
                               status="ok", time_s=1e-3 * i, compile_s=0.1, message="", date=now())
                   for i in range(keys)]
        lat = []
        time.sleep(max(0.0, start - time.time()))  # every client starts together
        for _ in range(rounds):
            for m in records:
                t = time.perf_counter()
                if phase == "put":
                    self.cache.put(m)
                else:
                    hit = self.cache.get(m.key)
                    assert (hit is None) == (phase == "miss"), (phase, m.key)
                lat.append(time.perf_counter() - t)
        if phase == "put":
            self.cache.flush()  # every put delivered and written: part of the cost
        return {"end": time.time(), "ops": len(lat), "lat": lat}


def run_design(design: str, folder: str, clients: int, keys: int, repeat: int) -> dict:
    import ray

    from envs.mlir.shared_cache import NAMESPACE, start_server, stop_server
    client_opts, server_opts = DESIGNS[design]
    name = start_server(folder, **server_opts)
    actors = [ray.remote(num_cpus=0)(Client).remote(name, client_opts) for _ in range(clients)]
    ray.get([a.ready.remote() for a in actors])
    rows = []
    for phase in PHASES:
        rounds = repeat if phase == "hit (repeated)" else 1
        start = time.time() + 1.0
        res = ray.get([a.run.remote(phase, i, clients, keys, rounds, start) for i, a in enumerate(actors)])
        wall = max(r["end"] for r in res) - start
        lat = sorted(x for r in res for x in r["lat"])
        ops = sum(r["ops"] for r in res)
        rows.append({"design": design, "phase": phase, "ops": ops, "wall_s": wall, "ops_per_s": ops / wall,
                     "p50_us": 1e6 * lat[len(lat) // 2], "p99_us": 1e6 * lat[int(len(lat) * 0.99)]})
        print(f"  {design:<4} {phase:<20} {ops:7d} ops in {wall:6.2f} s: {ops / wall:10.0f} /s", flush=True)
    stats = ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote())
    for a in actors:
        ray.kill(a)
    stop_server(name)
    return {"rows": rows, "server": stats}


def main() -> None:
    import ray
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--keys", type=int, default=300, help="records per client and phase")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of the repeated-hit phase")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cluster_cache.json"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: unix socket paths are limited
    os.environ["RAY_TMPDIR"] = tmp
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    ray.init(address="local", include_dashboard=False)
    try:
        result = {"clients": args.clients, "keys": args.keys, "repeat": args.repeat, "cpus": os.cpu_count(),
                  "load_avg_before": os.getloadavg()[0], "designs": {}}
        for design in args.designs:
            result["designs"][design] = run_design(design, os.path.join(tmp, f"cache-{design}"), args.clients,
                                                   args.keys, args.repeat)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("\n| design | phase | ops/s | p50 µs | p99 µs |\n|---|---|---|---|---|")
    for design, d in result["designs"].items():
        for r in d["rows"]:
            print(f"| {design} | {r['phase']} | {r['ops_per_s']:,.0f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} |")
    for design, d in result["designs"].items():
        s = d["server"]
        print(f"{design}: server got {s['gets']} lookups, {s['puts']} puts in {s['batches']} calls; "
              f"{s['records']} records in {s['files']} Parquet file(s) before the last user left")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
