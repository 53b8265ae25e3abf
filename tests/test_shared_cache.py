"""One time cache for a multi-node Ray cluster (several nodes on this machine)."""
import pytest

from conftest import MATMUL, ray_cluster
from envs.mlir import MeasureConfig, Measurer, Program, Schedule


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster({"num_cpus": 1, "resources": {"head": 1}}, [{"num_cpus": 1, "resources": {"node_b": 1}}]) as c:
        yield c


def test_a_schedule_measured_on_one_node_is_a_hit_on_another(cluster, tmp_path):
    import ray
    from envs.mlir.shared_cache import ACTOR_NAME, start_server, stop_server
    folder = str(tmp_path / "cache")
    start_server(folder, flush_every=100)

    @ray.remote(num_cpus=1)
    def measure(schedule_text, local_dir):
        m = Measurer(MeasureConfig(threads=1, repetitions=1, shared_cache=ACTOR_NAME, cache_dir=local_dir))
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
    assert stop_server() == folder
    from envs.mlir import TimeCache
    c = TimeCache(folder)
    assert len(c) == 2  # the baseline and the schedule, each measured once
