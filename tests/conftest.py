"""Shared fixtures: small Linalg programs inline (real MLIR), one Measurer, Ray clusters."""
import contextlib
import os
import shutil
import socket
import tempfile
import time

# Every Ray this suite starts (test clusters, tune_run.py's runs, their workers) lives on loopback:
# Ray 2.60 resolves 127.0.0.1 to the machine's own address (services.resolve_ip_for_localhost)
# unless multi-node clusters are switched off, and then every node it starts, and every
# address it resolves, is 127.0.0.1.  Set before Ray is first imported (ray_constants reads it
# then); child processes inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest

from envs.mlir import MeasureConfig, Measurer, Program

MATMUL = """
func.func @mm(%a: tensor<24x32xf32>, %b: tensor<32x40xf32>) -> tensor<24x40xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<24x40xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<24x40xf32>) -> tensor<24x40xf32>
  %r = linalg.matmul ins(%a, %b : tensor<24x32xf32>, tensor<32x40xf32>) outs(%f : tensor<24x40xf32>) -> tensor<24x40xf32>
  return %r : tensor<24x40xf32>
}
"""

# conv 3x3 NHWC + bias + relu (a generic with a broadcast bias).
CONV = """
func.func @conv(%i: tensor<1x10x10x8xf32>, %w: tensor<3x3x8x16xf32>, %b: tensor<16xf32>) -> tensor<1x8x8x16xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x8x8x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<1x8x8x16xf32>) -> tensor<1x8x8x16xf32>
  %c = linalg.conv_2d_nhwc_hwcf {dilations = dense<1> : tensor<2xi64>, strides = dense<1> : tensor<2xi64>}
         ins(%i, %w : tensor<1x10x10x8xf32>, tensor<3x3x8x16xf32>) outs(%f : tensor<1x8x8x16xf32>) -> tensor<1x8x8x16xf32>
  %y = linalg.generic {indexing_maps = [affine_map<(n,h,w,c) -> (n,h,w,c)>, affine_map<(n,h,w,c) -> (c)>,
                                        affine_map<(n,h,w,c) -> (n,h,w,c)>],
                       iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
         ins(%c, %b : tensor<1x8x8x16xf32>, tensor<16xf32>) outs(%e : tensor<1x8x8x16xf32>) {
  ^bb0(%x: f32, %bb: f32, %o: f32):
    %s = arith.addf %x, %bb : f32
    %r = arith.maximumf %s, %z : f32
    linalg.yield %r : f32
  } -> tensor<1x8x8x16xf32>
  return %y : tensor<1x8x8x16xf32>
}
"""

CONV_NCHW = """
func.func @c(%x: tensor<1x8x10x10xf32>, %k: tensor<16x8x3x3xf32>) -> tensor<1x16x4x4xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x16x4x4xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<1x16x4x4xf32>) -> tensor<1x16x4x4xf32>
  %r = linalg.conv_2d_nchw_fchw {dilations = dense<1> : tensor<2xi64>, strides = dense<2> : tensor<2xi64>}
         ins(%x, %k : tensor<1x8x10x10xf32>, tensor<16x8x3x3xf32>) outs(%f : tensor<1x16x4x4xf32>) -> tensor<1x16x4x4xf32>
  return %r : tensor<1x16x4x4xf32>
}
"""

DEPTHWISE = """
func.func @dw(%x: tensor<1x10x10x16xf32>, %k: tensor<3x3x16xf32>) -> tensor<1x8x8x16xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x8x8x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<1x8x8x16xf32>) -> tensor<1x8x8x16xf32>
  %r = linalg.depthwise_conv_2d_nhwc_hwc {dilations = dense<1> : tensor<2xi64>, strides = dense<1> : tensor<2xi64>}
         ins(%x, %k : tensor<1x10x10x16xf32>, tensor<3x3x16xf32>) outs(%f : tensor<1x8x8x16xf32>) -> tensor<1x8x8x16xf32>
  return %r : tensor<1x8x8x16xf32>
}
"""

POOL = """
func.func @pool(%x: tensor<1x18x18x16xf32>) -> (tensor<1x8x8x16xf32>, tensor<1x16x8x8xf32>) {
  %ninf = arith.constant -3.4e38 : f32
  %w = tensor.empty() : tensor<3x3xf32>
  %e = tensor.empty() : tensor<1x8x8x16xf32>
  %f = linalg.fill ins(%ninf : f32) outs(%e : tensor<1x8x8x16xf32>) -> tensor<1x8x8x16xf32>
  %r = linalg.pooling_nhwc_max {dilations = dense<1> : tensor<2xi64>, strides = dense<2> : tensor<2xi64>}
         ins(%x, %w : tensor<1x18x18x16xf32>, tensor<3x3xf32>) outs(%f : tensor<1x8x8x16xf32>) -> tensor<1x8x8x16xf32>
  %et = tensor.empty() : tensor<1x16x8x8xf32>
  %t = linalg.transpose ins(%r : tensor<1x8x8x16xf32>) outs(%et : tensor<1x16x8x8xf32>) permutation = [0, 3, 1, 2]
  return %r, %t : tensor<1x8x8x16xf32>, tensor<1x16x8x8xf32>
}
"""

ELEMENTWISE = """
func.func @ew(%a: tensor<16x64xf32>, %b: tensor<16x64xf32>, %v: tensor<64xf32>) -> tensor<16x64xf32> {
  %e = tensor.empty() : tensor<16x64xf32>
  %s = linalg.add ins(%a, %b : tensor<16x64xf32>, tensor<16x64xf32>) outs(%e : tensor<16x64xf32>) -> tensor<16x64xf32>
  %bc = linalg.broadcast ins(%v : tensor<64xf32>) outs(%e : tensor<16x64xf32>) dimensions = [0]
  %m = linalg.mul ins(%s, %bc : tensor<16x64xf32>, tensor<16x64xf32>) outs(%e : tensor<16x64xf32>) -> tensor<16x64xf32>
  %x = linalg.exp ins(%m : tensor<16x64xf32>) outs(%e : tensor<16x64xf32>) -> tensor<16x64xf32>
  return %x : tensor<16x64xf32>
}
"""

BATCH = """
func.func @bmm(%a: tensor<2x16x32xf32>, %b: tensor<2x32x24xf32>, %m: tensor<24x32xf32>, %v: tensor<32xf32>)
    -> (tensor<2x16x24xf32>, tensor<24xf32>) {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<2x16x24xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<2x16x24xf32>) -> tensor<2x16x24xf32>
  %r = linalg.batch_matmul ins(%a, %b : tensor<2x16x32xf32>, tensor<2x32x24xf32>) outs(%f : tensor<2x16x24xf32>) -> tensor<2x16x24xf32>
  %ev = tensor.empty() : tensor<24xf32>
  %fv = linalg.fill ins(%z : f32) outs(%ev : tensor<24xf32>) -> tensor<24xf32>
  %mv = linalg.matvec ins(%m, %v : tensor<24x32xf32>, tensor<32xf32>) outs(%fv : tensor<24xf32>) -> tensor<24xf32>
  return %r, %mv : tensor<2x16x24xf32>, tensor<24xf32>
}
"""

# A real program that segfaults: it reads 2^40 elements past its input.
SEGFAULT = """
func.func @segv(%a: tensor<16xf32>) -> tensor<16xf32> {
  %e = tensor.empty() : tensor<16xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>], iterator_types = ["parallel"]} outs(%e : tensor<16xf32>) {
  ^bb0(%o: f32):
    %i = linalg.index 0 : index
    %big = arith.constant 1099511627776 : index
    %j = arith.addi %i, %big : index
    %v = tensor.extract %a[%j] : tensor<16xf32>
    linalg.yield %v : f32
  } -> tensor<16xf32>
  return %r : tensor<16xf32>
}
"""

# A real program that aborts (cf.assert on a condition that is always false).
ABORT = """
func.func @abort(%a: tensor<16xf32>) -> tensor<16xf32> {
  %e = tensor.empty() : tensor<16xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>], iterator_types = ["parallel"]}
         ins(%a : tensor<16xf32>) outs(%e : tensor<16xf32>) {
  ^bb0(%x: f32, %o: f32):
    %z = arith.constant 0.0 : f32
    %neg = arith.cmpf olt, %x, %z : f32
    %pos = arith.cmpf oge, %x, %z : f32
    %any = arith.ori %neg, %pos : i1
    %never = arith.xori %any, %any : i1
    cf.assert %never, "this program always aborts"
    linalg.yield %x : f32
  } -> tensor<16xf32>
  return %r : tensor<16xf32>
}
"""

PROGRAMS = {"matmul": MATMUL, "conv": CONV, "conv_nchw": CONV_NCHW, "depthwise": DEPTHWISE, "pool": POOL,
            "elementwise": ELEMENTWISE, "batch": BATCH}


@pytest.fixture(scope="session")
def programs():
    return {k: Program.from_text(v, f"{k}.mlir") for k, v in PROGRAMS.items()}


@pytest.fixture(scope="session")
def measurer(tmp_path_factory):
    """One worker pool and cache for the session (2 threads, 3 timed runs)."""
    cache = tmp_path_factory.mktemp("cache")
    m = Measurer(MeasureConfig(threads=2, repetitions=3, cache_dir=str(cache), compile_timeout_s=60,
                               run_timeout_s=30))
    yield m
    m.close()


def pytest_configure(config):
    # Worker processes find the package from the repository root.
    os.environ.setdefault("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def short_tmp() -> str:
    """A temp dir for Ray's files: short, as unix socket paths are limited to 107 bytes."""
    return tempfile.mkdtemp(prefix="rt", dir="/tmp")


def free_port() -> int:
    """A TCP port nothing on this machine listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_cluster(head: dict, workers: list):
    """A real multi-node Ray cluster on this machine (one raylet per node), ours alone:
    its own temp dir and dashboard ports, connected to from this process, shut down (only
    it) at the end.  Ray's default dashboard ports would collide with a user's Ray already
    running here (a training job): the head's dashboard then never registers and the test's
    run fails with "Could not read 'dashboard' from GCS"."""
    import ray
    from ray.cluster_utils import Cluster
    tmp, old = short_tmp(), os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    head = {"dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(), **head}
    c = Cluster(initialize_head=True, head_node_args=head)
    nodes = [c.add_node(**w) for w in workers]
    ray.init(address=c.address)
    try:
        ips = {n["NodeManagerAddress"] for n in ray.nodes()} | {c.address.rsplit(":", 1)[0]}
        assert ips == {"127.0.0.1"}, f"a test cluster's nodes must be on loopback only, got {sorted(ips)}"
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def actor_gone(name: str, namespace: str = "mlir_rl", timeout: float = 30) -> bool:
    """Whether the named actor is gone (a killed actor's name is released in a moment)."""
    import ray
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return True
        time.sleep(0.2)
    return False
