"""Training on a real multi-node Ray cluster (several raylets on this machine): env
runners spread over nodes, the learner placed through a stand-in GPU resource, a worker
node killed mid-run, the driver killed and resumed, and the shared time cache."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import actor_gone, ray_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, name, evaluate=False, **run):
    with open(os.path.join(ROOT, "tune_configs", "smoke.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["resources"].update(num_env_runners=2, custom_resources_per_learner={"learner_gpu": 1})
    cfg["run"].update(name=name, checkpoint_every=1, **run)
    if not evaluate:
        cfg["run"].pop("evaluate", None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def cluster():
    # A head with the learner's stand-in GPU resource; two env-runner nodes and a spare.
    with ray_cluster({"num_cpus": 1, "resources": {"learner_gpu": 1}}, [{"num_cpus": 1}] * 3) as c:
        yield c


def _start(cfg, c, tmp_path, *extra, evaluate=False):
    env = dict(os.environ, MLIR_RL_CACHE=str(tmp_path / "cache"))
    return subprocess.Popen([sys.executable, "tune_run.py", "--config", cfg, "--address", c.address,
                             "--results-dir", str(tmp_path / "results"), *(() if evaluate else ("--no-eval",)),
                             *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc, text, timeout=300):
    lines, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} did not appear:\n" + "".join(lines[-40:]))


def _actors(class_name):
    from ray.util.state import list_actors
    return [a for a in list_actors(filters=[("class_name", "=", class_name)], limit=1000) if a.state == "ALIVE"]


def test_spread_placement_a_killed_worker_node_and_the_evaluation_at_the_end(cluster, tmp_path):
    c, workers = cluster
    proc = _start(_config(tmp_path, "spread", evaluate=True, stop_iters=6), c, tmp_path, evaluate=True)
    lines = _wait_for(proc, " iter   2 ")
    runners = _actors("SingleAgentEnvRunner")
    nodes = {a.node_id for a in runners}
    assert len(nodes) == 2, runners  # spread over two worker nodes
    head = c.head_node.node_id
    ppo = _actors("PPO")
    assert ppo and all(a.node_id == head for a in ppo)  # the learner sits where "learner_gpu" is
    victim = next(w for w in workers if w.node_id in nodes)
    c.remove_node(victim, allow_graceful=False)  # a worker node dies mid-run
    out, _ = proc.communicate(timeout=600)
    lines += out.splitlines(keepends=True)
    text = "".join(lines)
    assert proc.returncode == 0, text[-4000:]
    assert " iter   6 " in text  # the training ended normally
    # Then the evaluation, after the cluster's cache actor is gone: its winners compiled and run again.
    import csv
    rows = list(csv.DictReader(open(tmp_path / "results" / "spread" / "evaluation.csv")))
    assert rows and all(r["correct"] == "true" for r in rows), text[-3000:]
    workers.remove(victim)
    workers.append(c.add_node(num_cpus=1))  # keep the cluster's shape for the next test


def test_killed_driver_resumes_and_no_flushed_cache_entry_is_lost(cluster, tmp_path):
    c, _ = cluster
    cfg = _config(tmp_path, "resume", stop_iters=5)
    proc = _start(cfg, c, tmp_path)
    _wait_for(proc, " iter   3 ")
    cache = tmp_path / "cache"
    from envs.mlir.shared_cache import NAMESPACE, server_name
    import ray
    ray.get(ray.get_actor(server_name(str(cache)), namespace=NAMESPACE).flush.remote())
    from envs.mlir import TimeCache
    before = {m.key for m in TimeCache(str(cache)).records()}
    assert before
    proc.send_signal(signal.SIGKILL)  # the driver dies
    proc.wait(timeout=60)
    resumed = _start(cfg, c, tmp_path, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-4000:]
    assert "resuming" in out and " iter   5 " in out
    iters = [int(x.split(" iter ")[1].split()[0]) for x in out.splitlines() if " iter " in x]
    assert iters[0] > 1  # it went on from a checkpoint, not from the start
    after = {m.key for m in TimeCache(str(cache)).records()}
    # Nothing flushed before the fault is lost (the files themselves may have been merged since).
    assert before <= after
    assert actor_gone(server_name(str(cache)))  # the resumed run, the last live user, stopped the cache


def test_a_gpu_the_cluster_lacks_stops_at_once(cluster, tmp_path):
    """Inside a cluster job (RAY_ADDRESS set, as `ray job submit` does) tune_run joins that
    cluster without --address; a GPU asked for by flag that it lacks stops the run at once."""
    c, _ = cluster
    env = dict(os.environ, MLIR_RL_CACHE=str(tmp_path / "cache"), RAY_ADDRESS=c.address)
    proc = subprocess.Popen([sys.executable, "tune_run.py", "--config", _config(tmp_path, "gpu", stop_iters=1),
                             "--results-dir", str(tmp_path / "results"), "--no-eval", "--gpus-per-learner", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    assert f"joining the Ray cluster at RAY_ADDRESS={c.address}" in out
    assert f"the cluster at {c.address} has 0 GPU(s)" in out
