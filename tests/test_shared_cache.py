"""One time cache for a multi-node Ray cluster (several nodes on this machine), and the
compaction of its Parquet files."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import MATMUL, actor_gone, ray_cluster
from envs.mlir import MeasureConfig, Measurer, Program, Schedule, TimeCache
from envs.mlir.cache import Measurement, now

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster({"num_cpus": 1, "resources": {"head": 1}}, [{"num_cpus": 1, "resources": {"node_b": 1}}]) as c:
        yield c


def _record(i: int, time_s: float = 1.0) -> Measurement:
    return Measurement(program_hash="p", schedule=f"operation_0: T({i})", fingerprint="f", status="ok",
                       time_s=time_s, compile_s=0.1, message="", date=now())


def _parquet(folder) -> list:
    return sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))


def test_a_schedule_measured_on_one_node_is_a_hit_on_another(cluster, tmp_path):
    import ray
    from envs.mlir.shared_cache import start_server, stop_server
    folder = str(tmp_path / "cache")
    name = start_server(folder)

    @ray.remote(num_cpus=1)
    def measure(schedule_text, local_dir):
        m = Measurer(MeasureConfig(threads=1, repetitions=1, shared_cache=name, cache_dir=local_dir))
        try:
            r = m.measure(Program.from_text(MATMUL, "mm.mlir"), Schedule.parse(schedule_text))
            return r.cache_hit, r.status, r.time_s, m.counts["measured"], ray.get_runtime_context().get_node_id()
        finally:
            m.close()

    text = "operation_1: T(8,8,8) V"
    a = ray.get(measure.options(resources={"head": 1}).remote(text, str(tmp_path / "a")))
    b = ray.get(measure.options(resources={"node_b": 1}).remote(text, str(tmp_path / "b")))
    assert a[4] != b[4]  # two different nodes
    assert a[0] is False and a[1] == "ok" and a[3] >= 1
    assert b[0] is True and b[2] == a[2]  # the other node's measurement, not its own
    # At the end the cache is on the driver's disk, as Parquet.
    assert stop_server(name) == folder
    assert actor_gone(name)
    assert len(TimeCache(folder)) == 2  # the baseline and the schedule, each measured once


def test_batched_puts_and_in_memory_hits_across_nodes(cluster, tmp_path):
    import ray
    from envs.mlir.shared_cache import NAMESPACE, SharedTimeCache, start_server, stop_server
    folder = str(tmp_path / "cache")
    name = start_server(folder, flush_every=1000, flush_s=600)
    server = ray.get_actor(name, namespace=NAMESPACE)

    records = [_record(i) for i in range(25)]
    keys = [m.key for m in records]

    @ray.remote(num_cpus=1, resources={"node_b": 1})
    def writer():
        c = SharedTimeCache(name, batch_size=10, batch_s=600)
        for m in records:
            c.put(m)
        sent = ray.get(c._actor.stats.remote())  # after this caller's earlier calls: in order
        own = c.get(keys[3])  # one's own put: no call
        c.flush()  # the last 5, and the actor writes its buffer
        return sent, dict(c.counts), own.cache_hit, ray.get_runtime_context().get_node_id()

    @ray.remote(num_cpus=1, resources={"head": 1})
    def reader():
        c = SharedTimeCache(name)
        first = [c.get(k) for k in keys]
        again = [c.get(k) for k in keys]
        missing = [c.get(("p", "never measured", "f")) for _ in range(2)]
        return ([m.time_s if m else None for m in first], [m.cache_hit for m in again], missing,
                dict(c.counts), ray.get_runtime_context().get_node_id())

    sent, wcounts, own_hit, wnode = ray.get(writer.remote())
    assert sent["puts"] == 20 and sent["batches"] == 2  # 25 puts: two batches of 10 sent, 5 waiting
    assert wcounts["local_hits"] == 1 and wcounts["batches"] == 2 and own_hit is True
    assert len(_parquet(folder)) == 1  # one file for the 25 records, written at the flush
    gets_before = ray.get(server.stats.remote())["gets"]
    times, hits, missing, rcounts, node = ray.get(reader.remote())
    assert node != wnode  # written on one node, read on another
    assert times == [1.0] * 25 and all(hits) and missing == [None, None]
    assert rcounts == {"local_hits": 25, "remote_hits": 25, "misses": 2, "puts": 0, "batches": 0}
    # Only the first lookups and the misses were actor calls; a miss is not remembered.
    assert ray.get(server.stats.remote())["gets"] - gets_before == 27
    assert stop_server(name) == folder
    assert len(TimeCache(folder)) == 25


def test_compaction_keeps_every_record_and_a_crash_in_it_loses_nothing(tmp_path):
    folder = str(tmp_path)
    c = TimeCache(folder, flush_every=3, compact_files=4)
    for i in range(30):
        c.put(_record(i % 20, time_s=float(i)))  # keys 0-9 written twice: the later time wins
    c.close()
    files = _parquet(folder)
    assert len(files) < 4  # 10 flushes, merged as they came
    import pyarrow.parquet as pq
    assert sum(pq.read_metadata(os.path.join(folder, f)).num_rows for f in files) == 30  # every row kept
    expected = {_record(i).key: float(i + 20 if i < 10 else i) for i in range(20)}
    assert {m.key: m.time_s for m in TimeCache(folder).records()} == expected

    # A crash between the merged file's rename and the removal of the old ones: both are there.
    for i in range(30, 36):
        c.put(_record(i))
    c.flush()
    before = {f: open(os.path.join(folder, f), "rb").read() for f in _parquet(folder)}
    merged = os.path.basename(c.compact())
    assert _parquet(folder) == [merged]
    for f, data in before.items():  # put the old files back, as a crash would have left them
        with open(os.path.join(folder, f), "wb") as out:
            out.write(data)
    (tmp_path / (merged + ".tmp")).write_bytes(b"half a file")  # and a write cut short
    expected.update({_record(i).key: 1.0 for i in range(30, 36)})
    again = TimeCache(folder, compact_files=2)
    assert {m.key: m.time_s for m in again.records()} == expected and not again.skipped_files
    assert again.compact() and {m.key: m.time_s for m in TimeCache(folder).records()} == expected


def test_a_restarted_cache_actor_loses_nothing_flushed(cluster, tmp_path):
    import ray
    from envs.mlir.shared_cache import NAMESPACE, SharedTimeCache, start_server, stop_server
    folder = str(tmp_path / "cache")
    name = start_server(folder, flush_every=1000, flush_s=600, compact_files=3)
    server = ray.get_actor(name, namespace=NAMESPACE)
    c = SharedTimeCache(name, batch_size=5)
    for i in range(40):
        c.put(_record(i))
        if i % 10 == 9:
            c.flush()  # 4 files, merged as they come
    assert ray.get(server.stats.remote())["files"] < 3
    pid = ray.get(server.pid.remote())
    os.kill(pid, signal.SIGKILL)  # the actor's process dies; Ray restarts it
    fresh = SharedTimeCache(name, local_size=0)  # every lookup goes to the (restarted) actor
    assert all(fresh.get(_record(i).key) is not None for i in range(40))
    assert ray.get(server.pid.remote()) != pid and ray.get(server.size.remote()) == 40
    assert stop_server(name) == folder  # this job is still its user after the restart: it leaves last
    assert actor_gone(name)
    assert len(TimeCache(folder)) == 40


_JOB = """
import sys, time
sys.path.insert(0, {root!r})
import ray
from envs.mlir.shared_cache import SharedTimeCache, start_server, stop_server
from envs.mlir.cache import Measurement, now
ray.init(address={address!r})
name = start_server({folder!r})
c = SharedTimeCache(name)
c.put(Measurement(program_hash="p", schedule={schedule!r}, fingerprint="f", status="ok", time_s=2.0,
                  compile_s=0.1, message="", date=now()))
c.flush()
print("registered", flush=True)
sys.stdin.readline()
print("stopped", stop_server(), flush=True)
"""


def _job(cluster, folder, schedule):
    c, _ = cluster
    code = textwrap.dedent(_JOB.format(root=ROOT, address=c.address, folder=folder, schedule=schedule))
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("registered"):
            return p
    raise AssertionError("".join(lines[-30:]))


def test_one_job_ending_does_not_stop_another_jobs_cache(cluster, tmp_path):
    import ray
    from envs.mlir.shared_cache import NAMESPACE, SharedTimeCache, server_name, start_server, stop_server
    folder = str(tmp_path / "cache")
    other = _job(cluster, folder, "a")  # another run (its own driver, its own Ray job) starts the cache
    name = start_server(folder)  # this run finds it
    assert name == server_name(folder)
    c = SharedTimeCache(name, local_size=0)
    assert c.get(("p", "a", "f")).time_s == 2.0
    server = ray.get_actor(name, namespace=NAMESPACE)
    os.kill(ray.get(server.pid.remote()), signal.SIGKILL)  # a restart in between keeps both users
    out, _ = other.communicate("\n", timeout=120)  # the other run ends
    assert other.returncode == 0 and f"stopped {folder}" in out, out
    c.put(_record(1))
    c.flush()
    assert c.get(("p", "a", "f")) is not None and c.get(_record(1).key) is not None  # still served

    killed = _job(cluster, folder, "b")  # a run whose driver is killed: it never leaves
    killed.kill()
    killed.wait(timeout=60)
    time.sleep(1)  # the cluster marks its job dead
    assert stop_server(name) == folder  # this run, the last live user, stops it
    assert actor_gone(name)
    assert {m.schedule for m in TimeCache(folder).records()} == {"a", "b", "operation_0: T(1)"}
    # A cache folder of its own, an actor of its own.
    assert server_name(str(tmp_path / "other")) != name
