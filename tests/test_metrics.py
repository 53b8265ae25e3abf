"""The Ray metrics a run exports, read back from the head node's Prometheus endpoint
(TensorBoard's reading of a run: tests/test_models.py)."""
import time
import urllib.request

from conftest import free_port, ray_cluster


def test_the_scheduling_metrics_are_listed_by_the_heads_metrics_endpoint():
    import ray
    from rllib_models.callbacks import SchedulingMetrics
    port = free_port()
    with ray_cluster({"num_cpus": 1, "metrics_export_port": port}, []):
        @ray.remote(num_cpus=0)
        class Trainer:  # where the callback runs in a real run: the algorithm's actor
            def report(self):
                SchedulingMetrics()._export({"speedup_geomean": 2.5, "best_speedup_geomean": 4.0,
                                             "cache_hit_rate": 0.25, "failures": {"timeout": 1, "wrong": 2}})
                return True

        trainer = Trainer.remote()
        assert ray.get(trainer.report.remote())
        want = {"mlir_rl_speedup_geomean": 2.5, "mlir_rl_best_speedup_geomean": 4.0,
                "mlir_rl_cache_hit_rate": 0.25, "mlir_rl_failures": 3.0}
        seen, text, t0 = {}, "", time.time()
        while time.time() - t0 < 90 and set(seen) != set(want):  # exported every few seconds
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            for line in text.splitlines():
                name = line.split("{")[0].split(" ")[0]
                if not line.startswith("#") and name.endswith(tuple(want)):
                    seen[next(k for k in want if name.endswith(k))] = float(line.rsplit(" ", 1)[1])
            time.sleep(2)
        assert seen == want, text[-3000:]

