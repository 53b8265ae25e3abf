"""Worker pool faults, the correctness check, the time cache, and the CLI."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from envs.mlir import MeasureConfig, Measurer, Program, Schedule, TimeCache, WorkerPool
from envs.mlir.cache import Measurement, now
from envs.mlir.compile import compare

from conftest import ABORT, MATMUL, SEGFAULT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ADD = """
func.func @f(%a: tensor<8x8xf32>, %b: tensor<8x8xf32>) -> tensor<8x8xf32> {
  %e = tensor.empty() : tensor<8x8xf32>
  %r = linalg.add ins(%a, %b : tensor<8x8xf32>, tensor<8x8xf32>) outs(%e : tensor<8x8xf32>) -> tensor<8x8xf32>
  return %r : tensor<8x8xf32>
}
"""
BIG = """
func.func @big(%a: tensor<768x768xf32>, %b: tensor<768x768xf32>) -> tensor<768x768xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<768x768xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<768x768xf32>) -> tensor<768x768xf32>
  %r = linalg.matmul ins(%a, %b : tensor<768x768xf32>, tensor<768x768xf32>) outs(%f : tensor<768x768xf32>) -> tensor<768x768xf32>
  return %r : tensor<768x768xf32>
}
"""


def _job(p: Program, **kw):
    job = {"program": p.text, "func": p.func_name, "inputs": p.inputs, "outputs": p.outputs}
    job.update(kw)
    return job


def test_wrong_result_is_caught():
    """A program made wrong on purpose (a - b) checked against a + b's result."""
    add = Program.from_text(ADD, "add.mlir")
    sub = Program.from_text(ADD.replace("linalg.add", "linalg.sub"), "sub.mlir")
    with WorkerPool(threads=1) as pool:
        ref = pool.run(_job(add, want_output=True), 60, 60)
        assert ref["status"] == "ok"
        same = pool.run(_job(add, reference=ref["outputs"]), 60, 60)
        assert same["status"] == "ok" and same["max_error"] == 0
        wrong = pool.run(_job(sub, reference=ref["outputs"]), 60, 60)
    assert wrong["status"] == "wrong_result"
    assert "differs from the untransformed program" in wrong["message"]


def test_tolerance_fits_reassociated_sums():
    import numpy as np
    ref = [np.full((4, 4), 100.0, np.float32)]
    assert compare([ref[0] + 0.05], ref, 1e-3, 1e-5)[0]  # 0.05 <= 1e-3 * 100
    assert not compare([ref[0] + 0.5], ref, 1e-3, 1e-5)[0]
    assert not compare([np.full((4, 4), np.nan, np.float32)], ref, 1e-3, 1e-5)[0]
    ints = [np.arange(4, dtype=np.int32)]
    assert compare([ints[0].copy()], ints, 1e-3, 0)[0] and not compare([ints[0] + 1], ints, 1e-3, 0)[0]


@pytest.mark.parametrize("text,signal_name", [(SEGFAULT, "SIGSEGV"), (ABORT, "SIGABRT")])
def test_native_crash_is_a_status_and_the_pool_goes_on(tmp_path, text, signal_name):
    m = Measurer(MeasureConfig(threads=1, repetitions=1, cache_dir=str(tmp_path)))
    try:
        crash = m.baseline(Program.from_text(text, "crash.mlir"))
        assert crash.status == "crash" and signal_name in crash.message
        assert m.pool.replaced == 1
        ok = m.baseline(Program.from_text(ADD, "add.mlir"))
        assert ok.status == "ok" and ok.time_s > 0
    finally:
        m.close()


def test_compile_timeout_kills_the_worker_and_the_pool_goes_on(programs):
    p = programs["conv"]
    with WorkerPool(threads=1) as pool:
        res = pool.run(_job(p), compile_timeout_s=0.001, run_timeout_s=30)
        assert res["status"] == "timeout" and "compiling took longer than 0.001 s" in res["message"]
        assert pool.replaced == 1
        assert pool.run(_job(p), 60, 60)["status"] == "ok"


def test_run_timeout_is_retried_once_then_cached_and_the_pool_goes_on(tmp_path):
    m = Measurer(MeasureConfig(threads=1, repetitions=3, run_timeout_s=0.3, cache_dir=str(tmp_path)))
    try:
        big = Program.from_text(BIG, "big.mlir")
        slow = m.baseline(big)  # about 1 s a run, untransformed: both tries time out
        assert slow.status == "timeout" and "running took longer than 0.3 s (twice)" in slow.message
        assert m.counts["timeout_retries"] == 1 and m.counts["measured"] == 2
        assert m.pool.replaced == 2  # each timed-out worker was killed and replaced
        assert m.cache.get(slow.key).status == "timeout"
        again = m.baseline(big)
        assert again.cache_hit and again.status == "timeout" and m.counts["measured"] == 2
        assert m.baseline(Program.from_text(ADD, "add.mlir")).status == "ok"
        assert m.counts["timeout_retries"] == 1  # an ok measurement is not retried
    finally:
        m.close()


class _FlakyPool:
    """A FAKE WorkerPool (no compilation): the baseline runs; the first scheduled job
    times out, every later one is ok. Stands in for a machine busy for a moment."""

    def __init__(self):
        self.jobs = []

    def run(self, job, compile_timeout_s, run_timeout_s):
        self.jobs.append(job)
        if job["want_output"]:
            return {"status": "ok", "time_s": 2e-3, "compile_s": 0.1, "outputs": [np.zeros((8, 8), np.float32)]}
        if sum(not j["want_output"] for j in self.jobs) == 1:
            return {"status": "timeout", "message": f"running took longer than {run_timeout_s:g} s"}
        return {"status": "ok", "time_s": 1e-3, "compile_s": 0.1, "max_error": 0.0, "message": ""}

    def close(self):
        pass


def test_timeout_then_ok_on_the_retry_is_what_is_returned_and_cached(tmp_path):
    p = Program.from_text(ADD, "add.mlir")
    m = Measurer(MeasureConfig(threads=1, cache_dir=str(tmp_path)))
    m._pool = fake = _FlakyPool()
    try:
        r = m.evaluate(p, Schedule.parse("operation_0: V"))
        assert r.measurement.status == "ok" and r.speedup == pytest.approx(2.0)
        assert m.counts["timeout_retries"] == 1 and len(fake.jobs) == 3  # baseline, timeout, retry
        assert m.cache.get(r.measurement.key).status == "ok"
        assert m.measure(p, Schedule.parse("operation_0: V")).cache_hit and len(fake.jobs) == 3
    finally:
        m.close()


def test_harness_error_is_internal_error_logged_counted_and_not_cached(tmp_path, caplog):
    """A real bug of the harness, in a real worker: a reference file of strings (as a broken
    cache folder would hold) makes `compare` raise in the worker. Not the schedule's doing."""
    p = Program.from_text(ADD, "add.mlir")
    s = Schedule.parse("operation_0: V")
    cfg = MeasureConfig(threads=1, repetitions=1, cache_dir=str(tmp_path))
    with Measurer(cfg) as m:
        assert m.baseline(p).ok  # caches the baseline and writes its reference file
        ref = m._ref_path(p)
    np.savez(ref, np.full((8, 8), "x"))
    with Measurer(cfg) as m, caplog.at_level("ERROR", logger="envs.mlir"):
        bad = m.measure(p, s)
        assert bad.status == "internal_error" and not bad.ok
        assert "internal error while running" in bad.message and "Traceback" in bad.message
        assert "in compare" in bad.message and "TypeError" in bad.message
        assert m.counts["internal_errors"] == 1 and m.counts["measured"] == 1
        assert m.cache.get(bad.key) is None  # never cached
        logged = [r for r in caplog.records if r.name == "envs.mlir"]
        assert len(logged) == 1 and "Traceback" in logged[0].getMessage()
        again = m.measure(p, s)  # measured again, not served from the cache
        assert again.status == "internal_error" and not again.cache_hit
        assert m.counts["internal_errors"] == 2 and m.counts["measured"] == 2
        assert m.pool.replaced == 0  # the worker lives on
    os.remove(ref)  # the harness mended: the same schedule now measures and is cached
    with Measurer(cfg) as m:
        fixed = m.measure(p, s)
        assert fixed.ok and not fixed.cache_hit and m.cache.get(fixed.key).ok


def test_script_bug_is_internal_error_but_an_invalid_schedule_still_raises(monkeypatch, caplog):
    """`build_script` is replaced by FAKES: one with a bug of ours, one refusing the schedule."""
    import envs.mlir.measure as measure_mod
    from envs.mlir import ScheduleError
    p = Program.from_text(ADD, "add.mlir")

    def buggy(*a, **k):
        raise KeyError("a bug in the script builder")

    m = Measurer(MeasureConfig(threads=1))
    monkeypatch.setattr(measure_mod, "build_script", buggy)
    with caplog.at_level("ERROR", logger="envs.mlir"):
        res = m.measure(p, Schedule.parse("operation_0: V"))
    assert res.status == "internal_error" and "building the transform script" in res.message
    assert "KeyError" in res.message and m.counts["internal_errors"] == 1
    assert any("Traceback" in r.getMessage() for r in caplog.records if r.name == "envs.mlir")

    def refuses(*a, **k):
        raise ScheduleError("operation_0: V: not for this op")

    monkeypatch.setattr(measure_mod, "build_script", refuses)
    with pytest.raises(ScheduleError):
        m.measure(p, Schedule.parse("operation_0: V"))
    assert m._pool is None  # nothing was compiled
    m.close()


def test_status_list_is_one():
    from envs.config import FAILURES, EnvConfig
    from envs.mlir import STATUSES
    assert set(FAILURES) == set(STATUSES) - {"ok", "internal_error"}
    assert set(EnvConfig().penalties) == set(FAILURES)
    with pytest.raises(ValueError, match="unknown status internal_error"):
        EnvConfig(penalties={"internal_error": -1.0})


def test_failures_metric_is_every_logged_status_but_ok():
    from rllib_models.callbacks import SchedulingMetrics
    cb = SchedulingMetrics()
    result = {"env_runners": {"mlir": {"episodes": 5, "status": {
        "ok": 2, "timeout": 1, "internal_error": 2, "crash": float("nan")}}}}
    cb.on_train_result(result=result)
    assert result["mlir"]["failures"] == {"timeout": 1.0, "internal_error": 2.0, "crash": 0.0}


def test_default_cache_dir_honours_MLIR_RL_CACHE(monkeypatch):
    from envs.mlir.cache import default_cache_dir
    monkeypatch.setenv("MLIR_RL_CACHE", "~/elsewhere")
    assert default_cache_dir() == os.path.expanduser("~/elsewhere")
    monkeypatch.delenv("MLIR_RL_CACHE")
    assert default_cache_dir() == os.path.expanduser("~/.cache/mlir_rl/times")


def test_failed_transform_names_the_action_and_mlir_message(programs):
    """A script MLIR rejects (too many tile sizes) comes back as transform_failed."""
    p = programs["matmul"]
    bad = textwrap.dedent("""\
        module attributes {transform.with_named_sequence} {
          transform.named_sequence @__transform_main(%root: !transform.any_op {transform.readonly}) {
            %m = transform.structured.match attributes {tag = "operation_1"} in %root : (!transform.any_op) -> !transform.any_op
            %t, %l:4 = transform.structured.tile_using_for %m tile_sizes [4, 4, 4, 4] : (!transform.any_op) -> (!transform.any_op, !transform.any_op, !transform.any_op, !transform.any_op, !transform.any_op)
            transform.yield
          }
        }""")
    bad = bad.replace("!transform.any_op, !transform.any_op)\n", '!transform.any_op, !transform.any_op) loc("operation_1: T(4,4,4,4)")\n', 1)
    with WorkerPool(threads=1) as pool:
        res = pool.run(_job(p, script=bad), 60, 60)
    assert res["status"] == "transform_failed"
    assert res["where"] == 'loc("operation_1: T(4,4,4,4)")' 
    assert "too many tiles provided, expected at most 3 found 4" in res["message"]
    with WorkerPool(threads=1) as pool:  # a script that does not even parse: the same status
        res = pool.run(_job(p, script=bad.replace("%l:4", "%l")), 60, 60)
    assert res["status"] == "transform_failed" and res["where"].startswith('loc("-":4:')
    assert "invalid transform script" in res["message"]


def test_failure_is_pinned_on_the_action_or_the_op(programs):
    from envs.mlir.measure import _culprit
    p = programs["matmul"]
    assert _culprit(p, 'loc("operation_1: V")') == "operation_1: V"
    line = next(i for i, t in enumerate(p.text.splitlines(), 1) if 'tag = "operation_1"' in t)
    assert _culprit(p, f'loc("-":{line}:10)') == "operation_1 (the schedule of this op)"


def test_cache_hit_compiles_nothing_and_survives_the_process(tmp_path, programs):
    p = programs["matmul"]
    s = Schedule.parse("operation_1: T(8,8,8) V")
    cfg = MeasureConfig(threads=1, repetitions=1, cache_dir=str(tmp_path))
    with Measurer(cfg) as m:
        first = m.measure(p, s)
        assert first.ok and not first.cache_hit
        measured = m.counts["measured"]
        again = m.measure(p, s)
        assert again.cache_hit and again.time_s == first.time_s and m.counts["measured"] == measured
    # A new process-level Measurer reads the Parquet files: no worker is even started.
    m2 = Measurer(cfg)
    base, hit = m2.baseline(p), m2.measure(p, s)
    assert base.cache_hit and hit.cache_hit and hit.time_s == first.time_s
    assert m2._pool is None
    m2.close()
    files = [f for f in os.listdir(tmp_path) if f.endswith(".parquet")]
    assert files and all(f.startswith("part-") for f in files)


def _record(i: int) -> Measurement:
    return Measurement(program_hash="p", schedule=f"operation_0: T({i})", fingerprint="f", status="ok",
                       time_s=0.001 * (i + 1), compile_s=0.1, message="", date=now())


def test_corrupt_and_partial_cache_files_are_skipped(tmp_path):
    c = TimeCache(str(tmp_path), flush_every=2)
    for i in range(4):
        c.put(_record(i))
    c.close()
    good = sorted(f for f in os.listdir(tmp_path) if f.endswith(".parquet"))
    assert len(good) == 2
    (tmp_path / "part-garbage.parquet").write_bytes(b"not parquet at all")
    data = (tmp_path / good[0]).read_bytes()
    (tmp_path / "part-truncated.parquet").write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c2 = TimeCache(str(tmp_path))
    assert len(c2) == 4
    assert sorted(os.path.basename(x) for x in c2.skipped_files) == ["part-garbage.parquet", "part-truncated.parquet"]
    assert sum("skipping unreadable file" in str(x.message) for x in w) == 2
    assert c2.get(("p", "operation_0: T(3)", "f")).time_s == pytest.approx(0.004)


def test_killed_process_loses_only_its_unflushed_records(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from envs.mlir.cache import TimeCache, Measurement, now
        c = TimeCache({str(tmp_path)!r}, flush_every=3)
        for i in range(7):
            c.put(Measurement(program_hash="p", schedule=str(i), fingerprint="f", status="ok", time_s=1.0,
                              compile_s=0.1, message="", date=now()))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert r.returncode == -signal.SIGKILL
    c = TimeCache(str(tmp_path))
    assert sorted(int(m.schedule) for m in c.records()) == list(range(6))  # 2 flushes of 3; the 7th lost
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_cli_json(tmp_path):
    f = tmp_path / "mm.mlir"
    f.write_text(MATMUL)
    r = subprocess.run([sys.executable, "-m", "envs.mlir", str(f), "--schedule", "operation_1: TP(12,0,0) T(4,8,8) V",
                        "--json", "--cache-dir", str(tmp_path / "cache"), "--threads", "2", "--repetitions", "3"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status"] == "ok" and out["correct"] is True
    assert out["schedule"] == "operation_0: NT; operation_1: TP(12,0,0) T(4,8,8) V"
    assert out["baseline_s"] > 0 and out["scheduled_s"] > 0
    assert out["speedup"] == pytest.approx(out["baseline_s"] / out["scheduled_s"])
    assert "operation_1   linalg.matmul" in r.stderr  # the op table goes to stderr with --json


def test_cli_writes_transformed_module(tmp_path):
    f = tmp_path / "mm.mlir"
    f.write_text(MATMUL)
    out = tmp_path / "out.mlir"
    r = subprocess.run([sys.executable, "-m", "envs.mlir", str(f), "--schedule", "operation_1: T(8,8,8) V",
                        "--no-cache", "-o", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "vector.fma" in out.read_text() or "vector.outerproduct" in out.read_text()
    assert "@__transform_main" in (tmp_path / "out.mlir.transform.mlir").read_text()


def test_sample_times_warms_up_for_a_time_then_batches_by_the_last_warm_call():
    """`sample_times` on a stand-in call (a fake clock's callable, not a product part) whose
    first calls are slow, as a CPU's are after a compile: it keeps calling until `warmup_s`
    has passed, sizes each sample's batch by the last warm-up call, not the slow first."""
    from envs.mlir.timing import sample_times
    import time as _time
    calls = []

    def call():
        s = 4e-3 if len(calls) < 3 else 1e-4  # three slow calls, then fast ones
        calls.append(s)
        _time.sleep(s)
        return s

    out = sample_times(call, repetitions=4, warmup=1, warmup_s=0.03, min_sample_s=1e-3)
    assert out == pytest.approx([1e-4] * 4)
    warm = len(calls) - 4 * 10  # each sample: 1 ms / 0.1 ms = 10 calls
    assert warm >= 3 + (0.03 - 3 * 4e-3) / 2e-4  # ran on until 30 ms had passed (sleeps overshoot)
    calls.clear()
    # No warm-up time: `warmup` calls only (at least one), the batch judged by the last of them.
    assert sample_times(call, repetitions=2, warmup=2, warmup_s=0.0, min_sample_s=1e-3) == [4e-3, 1e-4]
    assert len(calls) == 2 + 2 * 1 and calls[:3] == [4e-3] * 3


def test_a_measurement_warms_up_for_warmup_s():
    """The worker times a real program after `warmup_s` of untimed calls (and the time cache's
    fingerprint moved with the protocol: CODEGEN_VERSION 10)."""
    from envs.mlir.compile import CODEGEN_VERSION
    assert CODEGEN_VERSION >= 10
    add = Program.from_text(ADD, "add.mlir")
    with WorkerPool(threads=1) as pool:
        quick = pool.run(_job(add, repetitions=1, warmup_s=0.0, min_sample_s=0.0), 60, 60)
        slow = pool.run(_job(add, repetitions=1, warmup_s=0.3, min_sample_s=0.0), 60, 60)
    assert quick["status"] == slow["status"] == "ok"
    assert quick["run_s"] < 0.1 and slow["run_s"] >= 0.3
