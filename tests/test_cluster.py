"""cluster.yaml and examples/cluster_local.yaml: Ray's own launcher validation, and the commands
Ray's launcher really runs on each node (its NodeUpdater, with a recorder instead of SSH):
token authentication on every node, the dashboard on loopback, env runners only where the
rollout_slot resource is, the project's pins installed, and `ray start` flags that Ray 2.60's CLI
accepts. bench/launch_local.py runs the local one for real (docs/CLUSTER.md)."""
import copy
import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AWS = os.path.join(ROOT, "cluster.yaml")
LOCAL = os.path.join(ROOT, "examples", "cluster_local.yaml")


def _prepared(path):
    from ray.autoscaler._private.util import prepare_config, validate_config
    with open(path) as f:
        cfg = yaml.safe_load(f)
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)  # raises on any schema error
    return full


def test_cluster_yaml_passes_ray_launcher_validation():
    import ray
    full = _prepared(AWS)
    assert full["head_node_type"] == "head_gpu"
    types = full["available_node_types"]
    assert types["cpu_worker"]["min_workers"] == 0
    assert types["cpu_worker"]["max_workers"] >= 1
    assert full["file_mounts"] == {"~/mlir-rl": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    # Pinned software: Ray's own images of the installed Ray, Python 3.11; a pinned host image.
    version = f"{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    assert full["docker"]["head_image"] == f"rayproject/ray:{version}-gpu"
    assert full["docker"]["worker_image"] == f"rayproject/ray:{version}-cpu"
    for t in types.values():
        assert t["node_config"].get("ImageId", "").lower() not in ("", "latest_dlami")  # not Ray's 18.04 default
    # Env runners only on the CPU workers: the head has no rollout_slot; one per physical core,
    # one core left to Ray; spot instances.
    assert "rollout_slot" not in types["head_gpu"]["resources"]
    worker = types["cpu_worker"]
    cores = worker["node_config"]["CpuOptions"]
    assert cores["ThreadsPerCore"] == 1 and worker["resources"]["CPU"] == cores["CoreCount"]
    assert 1 <= worker["resources"]["rollout_slot"] <= cores["CoreCount"] - 1
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    text = open(AWS).read()
    assert "RAY_AUTH_MODE=disabled" not in text and "0.0.0.0" not in text


def test_local_example_passes_ray_launcher_validation():
    full = _prepared(LOCAL)
    assert full["provider"]["head_ip"] == "127.0.0.1"
    # Two names for the local provider's two nodes, one address.
    import socket
    assert [socket.gethostbyname(w) for w in full["provider"]["worker_ips"]] == ["127.0.0.1"]
    assert full["provider"]["worker_ips"] != [full["provider"]["head_ip"]]


class _Recorder:
    """Stands for `subprocess` in Ray's command runners: records each command, runs none, and
    answers what the Docker runner asks the host."""
    DEVNULL = subprocess.DEVNULL

    def __init__(self):
        self.calls = []

    def _answer(self, cmd):
        text = " ".join(cmd)
        if "command -v docker" in text:
            return b"/usr/bin/docker"
        if ".Config.Env" in text:
            return json.dumps(["PATH=/home/ray/anaconda3/bin:/usr/bin", "HOME=/home/ray"]).encode()
        if "printenv HOME" in text:
            return b"/home/ray"
        if "/proc/meminfo" in text:
            return b"MemAvailable:   31000000 kB"
        if ".State.Running" in text:
            return b"false"
        return b""

    def check_call(self, cmd, *args, **kwargs):
        self.calls.append(list(cmd))
        return 0

    def check_output(self, cmd, *args, **kwargs):
        self.calls.append(list(cmd))
        return self._answer(cmd)


def _node_commands(path, node_type, head, monkeypatch, tmp_path):
    """The commands Ray's NodeUpdater runs to set up and start one node of `node_type` (as the
    autoscaler would launch it: its resources passed in), each as one string."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner
    from ray.autoscaler._private.updater import NodeUpdater
    from ray.autoscaler.node_provider import NodeProvider

    monkeypatch.setattr(SSHCommandRunner, "_ensure_ssh_control_path", lambda self: None)  # no /tmp/ray_ssh_*

    monkeypatch.setenv("HOME", str(tmp_path))  # the launching machine's ~/.ray/auth_token
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 32)
    monkeypatch.chdir(ROOT)
    full = _prepared(path)

    class Provider(NodeProvider):
        def __init__(self):
            super().__init__({}, full["cluster_name"])
            self.tags = {}

        def external_ip(self, node_id):
            return "10.0.0.2"

        internal_ip = external_ip

        def node_tags(self, node_id):
            return dict(self.tags)

        def set_node_tags(self, node_id, tags):
            self.tags.update(tags)

        def is_terminated(self, node_id):
            return False

    rec = _Recorder()
    resources = full["available_node_types"][node_type].get("resources") or {}
    updater = NodeUpdater(
        node_id="n-1", provider_config=full["provider"], provider=Provider(), auth_config=full["auth"],
        cluster_name=full["cluster_name"], file_mounts=full["file_mounts"],
        initialization_commands=full["initialization_commands"],
        setup_commands=full["head_setup_commands" if head else "worker_setup_commands"],
        ray_start_commands=full["head_start_ray_commands" if head else "worker_start_ray_commands"],
        runtime_hash="h", file_mounts_contents_hash="f", is_head_node=head,
        node_resources=json.dumps(resources) if resources else None,
        rsync_options={"rsync_exclude": full.get("rsync_exclude")}, process_runner=rec,
        docker_config=full.get("docker"))
    updater.do_update()
    return full, [" ".join(c) for c in rec.calls]


def _ray_start_args(command):
    """The arguments of the `ray start` inside one recorded command: the quoting layers (ssh,
    docker exec, bash -c) undone one by one, down to `... (...; ray start ARGS)`."""
    text = command
    while True:
        inner = [w for w in shlex.split(text) if "ray start" in w]
        if not inner or inner[0] == text:
            break
        text = inner[0]
    tail = text[text.rindex("ray start") + len("ray start"):].rstrip()
    return shlex.split(tail[:-1] if tail.endswith(")") else tail)


def _check_start_args(args):
    """Ray's own `ray start` command accepts them (no typo, no removed flag)."""
    from ray.scripts.scripts import start
    start.make_context("start", [a.replace("$RAY_HEAD_IP", "10.0.0.1") for a in args])


@pytest.mark.parametrize("node_type", ["head_gpu", "cpu_worker"])
def test_aws_node_commands(node_type, monkeypatch, tmp_path):
    head = node_type == "head_gpu"
    full, cmds = _node_commands(AWS, node_type, head, monkeypatch, tmp_path)
    image = full["docker"]["head_image" if head else "worker_image"]
    assert any(f"docker pull {image}" in c for c in cmds)
    assert any("docker run" in c and image in c and ("--gpus all" in c) == head for c in cmds)
    # The token travels to the node before Ray starts there; every `ray start` is in token mode.
    token_sync = [i for i, c in enumerate(cmds) if "rsync" in c and ".ray/auth_token" in c]
    starts = [i for i, c in enumerate(cmds) if "ray start" in c]
    assert token_sync and starts and max(token_sync) < min(starts)
    for i in starts:
        assert "RAY_AUTH_MODE=token" in cmds[i] and "docker exec" in cmds[i]
        args = _ray_start_args(cmds[i])
        _check_start_args(args)
        if head:
            assert "--head" in args and "--dashboard-host=127.0.0.1" in args
    assert not any("RAY_AUTH_MODE=disabled" in c or "dashboard-host=0.0.0.0" in c for c in cmds)
    # The project's pins, on every node, in the container; the worker's declared resources
    # (rollout_slot) reach its `ray start` through Ray's resource override.
    assert any("pip install" in c and "-r requirements.txt" in c and "docker exec" in c for c in cmds)
    overrides = [c for c in cmds if "RAY_OVERRIDE_RESOURCES" in c]
    assert bool(overrides) == (not head)
    if not head:
        assert all("rollout_slot" in c for c in overrides)


@pytest.mark.parametrize("node", ["head", "worker"])
def test_local_example_node_commands(node, monkeypatch, tmp_path):
    from ray.autoscaler._private.local.config import LOCAL_CLUSTER_NODE_TYPE
    # The local provider has one node type: head and worker differ by their commands.
    _, cmds = _node_commands(LOCAL, LOCAL_CLUSTER_NODE_TYPE, node == "head", monkeypatch, tmp_path)
    token_sync = [i for i, c in enumerate(cmds) if "rsync" in c and ".ray/auth_token" in c]
    starts = [i for i, c in enumerate(cmds) if "ray start" in c]
    assert token_sync and starts and max(token_sync) < min(starts)
    # Never `ray stop` (it kills every Ray on the machine): each node stops its own processes.
    assert not any("ray stop" in c for c in cmds)
    assert any(f"--stop-node {node}" in c for c in cmds)
    for i in starts:
        assert "RAY_AUTH_MODE=token" in cmds[i]
        args = _ray_start_args(cmds[i])
        _check_start_args(args)
        flags = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
        assert flags["--node-ip-address"] == "127.0.0.1"
        if node == "head":
            assert flags["--dashboard-host"] == "127.0.0.1"
            assert flags["--port"] != "6379" and flags["--dashboard-port"] != "8265"  # not Ray's defaults
            assert "--resources" not in flags
        else:
            assert json.loads(flags["--resources"]) == {"rollout_slot": 1}
            assert "--temp-dir" in flags


def test_cache_sync_copies_the_files_the_other_side_lacks(tmp_path, monkeypatch):
    """envs/mlir/cache_sync.py, as cluster.yaml runs it (a folder stands for the S3 bucket)."""
    import datetime
    from envs.mlir import cache_sync
    from envs.mlir.cache import Measurement, TimeCache
    cache, store, fresh = tmp_path / "cache", tmp_path / "bucket" / "mlir-rl", tmp_path / "fresh"
    tc = TimeCache(str(cache), flush_every=1)
    tc.put(Measurement("p", "s", "f", "ok", 1.0, 0.1, "", datetime.datetime.now(datetime.timezone.utc)))
    tc.flush()
    (cache / "part-x.parquet.tmp").write_text("half a file")  # being written: never copied
    monkeypatch.setenv("MLIR_RL_STORE", str(store))
    assert cache_sync.main(["push", "--cache-dir", str(cache)]) == 0
    pushed = sorted(p.name for p in (store / "times").iterdir())
    assert pushed == sorted(p.name for p in cache.glob("*.parquet")) and pushed
    assert cache_sync.sync(str(cache), str(store / "times")) == 0  # nothing new
    assert cache_sync.main(["pull", "--cache-dir", str(fresh)]) == 0
    assert len(TimeCache(str(fresh))) == len(tc) == 1
    monkeypatch.setenv("MLIR_RL_STORE", "s3://YOUR-BUCKET/mlir-rl")  # the placeholder: a no-op, not an error
    assert cache_sync.main(["push", "--cache-dir", str(cache)]) == 0
