"""Worker processes that compile and time programs, and the pool that keeps them.

A worker exists only to survive native crashes: MLIR and JIT code run there,
and every failure comes back to the parent as a status with MLIR's message.
Workers stay alive between jobs (imports and set-up paid once).  A worker that
passes its compile or run timeout is killed; one that dies (SIGSEGV, SIGABRT)
is reported as ``crash`` with the signal.  Either way a fresh one replaces it.
A Python exception other than MLIR's own failures (`StageError`) is a bug in
this harness, not the schedule's doing: it comes back as ``internal_error``
with its traceback.

Workers are plain subprocesses (``python -m envs.mlir._workerproc``), not
multiprocessing children, so that no user ``__main__`` is re-imported and the
pool works the same inside a Ray actor.  Protocol (a pair of pipes per worker): the parent sends a job dict;
the worker answers ``("compiled", seconds)`` and then ``("result", dict)``, or
``("result", dict)`` alone when compilation failed.
"""
from __future__ import annotations

import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Dict

from .timing import sample_times

# Statuses of a measurement: the one list (docs/MLIR_LAYER.md explains each).  Only OK
# counts as a speedup; INTERNAL_ERROR is a bug of this harness (never cached, never the
# schedule's fault); the others are the schedule's failures.
OK = "ok"
WRONG = "wrong_result"
TRANSFORM_FAILED = "transform_failed"
COMPILE_FAILED = "compile_failed"
CRASH = "crash"
TIMEOUT = "timeout"
INTERNAL_ERROR = "internal_error"
STATUSES = (OK, WRONG, TRANSFORM_FAILED, COMPILE_FAILED, CRASH, TIMEOUT, INTERNAL_ERROR)


def internal_error(phase: str) -> Dict[str, Any]:
    """The result for the exception being handled: a bug of the harness while `phase`."""
    return {"status": INTERNAL_ERROR, "message": f"internal error while {phase}:\n{traceback.format_exc()}"}


def _out_of_memory(phase: str) -> Dict[str, Any]:
    # Under the worker's address-space limit: a blow-up, as when native code dies of it.
    return {"status": CRASH, "message": f"out of memory (worker_memory_gb) while {phase}"}


def _serve(conn, threads: int, memory_gb: float = 0.0) -> None:
    """Worker main loop (runs in the child process)."""
    if memory_gb > 0:
        import resource
        limit = int(memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # OpenMP reads its thread count when libiomp5 is first loaded, inside the first JIT.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("KMP_WARNINGS", "0")
    # OpenMP's threads spin 200 ms after each parallel region by default: right after a job,
    # this worker's threads would take the cores from whichever process times next (another
    # worker, another env runner, PyTorch): a 16 us program measured up to 5x slower in 3 of
    # 12 tries (bench/contention.py).  Back-to-back calls of one measurement stay well within 1 ms.
    os.environ.setdefault("KMP_BLOCKTIME", "1")
    from . import compile as cc  # noqa: F401  (heavy imports, paid once per worker)
    from torch_mlir import ir  # noqa: F401
    openmp = cc.find_openmp()
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(("result", _measure(job, conn, openmp)))


def _measure(job: Dict[str, Any], conn, openmp) -> Dict[str, Any]:
    from . import compile as cc
    try:
        engine, ctx, compile_s, transform_s = cc.compile_program(
            job["program"], job["func"], job["inputs"], job["outputs"], job.get("script"),
            job.get("parallel", False), job.get("opt_level", 3), openmp)
    except cc.StageError as e:  # MLIR's own failures: the schedule's doing
        status = TRANSFORM_FAILED if e.stage == "transform" else COMPILE_FAILED
        return {"status": status, "message": e.message, "where": e.where}
    except MemoryError:
        return _out_of_memory("compiling")
    except Exception:  # anything else is a bug of ours: still a status, never a dead worker
        return internal_error("compiling")
    conn.send(("compiled", compile_s))
    try:
        return _time_and_check(job, cc, engine, compile_s, transform_s)
    except MemoryError:
        return _out_of_memory("running")
    except Exception:  # make_inputs, Runner, compare: the harness, not the schedule
        return internal_error("running")
    finally:
        del engine, ctx


def _time_and_check(job: Dict[str, Any], cc, engine, compile_s: float, transform_s: float) -> Dict[str, Any]:
    runner = cc.Runner(engine, cc.make_inputs(job["inputs"], job.get("seed", 0)), job["outputs"])
    t_run = time.perf_counter()
    times = sample_times(runner.run, job.get("repetitions", 5), job.get("warmup", 1), job.get("warmup_s", 0.0),
                         job.get("min_sample_s", 1e-3))
    out: Dict[str, Any] = {"status": OK, "time_s": statistics.median(times), "times": times,
                           "compile_s": compile_s, "transform_s": transform_s,
                           "run_s": time.perf_counter() - t_run, "message": ""}
    ref = job.get("reference")
    if ref is not None:
        correct, err = cc.compare(runner.outs, ref, job.get("rtol", 1e-3), job.get("atol", 1e-5))
        out["max_error"] = err
        if not correct:
            out["status"] = WRONG
            out["message"] = f"result differs from the untransformed program (max abs error {err:.3g})"
    if job.get("want_output"):
        out["outputs"] = [a.copy() for a in runner.outs]
    return out


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Conn:
    """One duplex channel over two pipes (send to the child, receive from it)."""

    def __init__(self, rfd: int, wfd: int):
        self._r, self._w = Connection(rfd, writable=False), Connection(wfd, readable=False)

    def send(self, obj) -> None:
        self._w.send(obj)

    def recv(self):
        return self._r.recv()

    def poll(self, timeout: float) -> bool:
        return self._r.poll(timeout)

    def close(self) -> None:
        self._r.close()
        self._w.close()


class _Worker:
    def __init__(self, threads: int, memory_gb: float):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "envs.mlir._workerproc", str(to_child_r), str(from_child_w), str(threads),
             str(memory_gb)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL, cwd=_ROOT)
        os.close(to_child_r)
        os.close(from_child_w)
        self.conn = _Conn(from_child_r, to_child_w)
        self.jobs = 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.wait(timeout=5)
        except (OSError, BrokenPipeError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _died(w: _Worker, phase: str) -> Dict[str, Any]:
    try:
        code = w.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        msg = f"worker died from {sig} while {phase}"
    else:
        msg = f"worker exited with code {code} while {phase}"
    return {"status": CRASH, "message": msg}


class WorkerPool:
    """A fixed number of live workers; `run(job)` is thread-safe and blocking."""

    def __init__(self, threads: int, size: int = 1, max_jobs_per_worker: int = 200, memory_gb: float = 0.0):
        self.threads = threads
        self.memory_gb = memory_gb
        self.max_jobs = max_jobs_per_worker
        self._idle: "queue.Queue[_Worker]" = queue.Queue()
        self._all = []
        self._lock = threading.Lock()
        self.replaced = 0
        for _ in range(size):
            self._add()

    def _add(self) -> None:
        w = _Worker(self.threads, self.memory_gb)
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def _retire(self, w: _Worker, kill: bool) -> None:
        w.kill() if kill else w.stop()
        with self._lock:
            self._all.remove(w)
            self.replaced += 1
        self._add()

    def run(self, job: Dict[str, Any], compile_timeout_s: float, run_timeout_s: float) -> Dict[str, Any]:
        w = self._idle.get()
        t0 = time.perf_counter()
        try:
            w.conn.send(job)
            phase, limit = "compiling", compile_timeout_s
            while True:
                if not w.conn.poll(limit):
                    self._retire(w, kill=True)
                    return {"status": TIMEOUT, "message": f"{phase} took longer than {limit:g} s"}
                try:
                    kind, payload = w.conn.recv()
                except (EOFError, OSError):
                    res = _died(w, phase)
                    self._retire(w, kill=True)
                    return res
                if kind == "compiled":
                    phase, limit = "running", run_timeout_s
                    continue
                payload["wall_s"] = time.perf_counter() - t0
                w.jobs += 1
                if w.jobs >= self.max_jobs:
                    self._retire(w, kill=False)
                else:
                    self._idle.put(w)
                return payload
        except BaseException:
            # An interrupted parent must not leave a half-used worker in the pool.
            self._retire(w, kill=True)
            raise

    def close(self) -> None:
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

