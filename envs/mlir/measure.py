"""Measure a (program, schedule): cache lookup, else compile, run, time and check.

`Measurer` is the one entry point the rest of the project uses.  The
untransformed program (the empty schedule) is the baseline: it is measured
and cached like any schedule, and its outputs on the seeded inputs are the
reference every scheduled result is compared with (kept in memory and, with
a cache folder, on disk beside the Parquet files).

Two statuses get special care here.  A ``timeout`` may come from a machine
that was busy for a moment: it is measured once more before it is cached.
An ``internal_error`` (a bug of this harness, in the worker or while building
the transform script) is logged with its traceback on the ``envs.mlir``
logger, counted in ``counts["internal_errors"]`` and never cached.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
import traceback
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from .cache import Measurement, TimeCache, machine_fingerprint, now
from .config import ActionConfig, MeasureConfig
from .errors import MlirInputError, ScheduleError, line_of
from .program import Program
from .schedule import Schedule
from .transform import Script, build_script
from .worker import INTERNAL_ERROR, OK, TIMEOUT, WorkerPool

log = logging.getLogger("envs.mlir")


class _HarnessFailure(Exception):
    """The reference could not be made for a bug of ours (carries the measurement)."""

    def __init__(self, measurement: "Measurement"):
        super().__init__(measurement.message)
        self.measurement = measurement


@dataclasses.dataclass(frozen=True)
class Result:
    """A schedule's measurement beside its program's baseline."""

    baseline: Measurement
    measurement: Measurement

    @property
    def speedup(self) -> Optional[float]:
        """baseline / scheduled time, only for a correct result."""
        if self.measurement.ok and self.baseline.ok and self.measurement.time_s:
            return self.baseline.time_s / self.measurement.time_s
        return None


class Measurer:
    """Measures schedules through a worker pool and a time cache."""

    def __init__(self, config: MeasureConfig = MeasureConfig(), actions: ActionConfig = ActionConfig()):
        self.cfg = config
        self.actions = actions
        self.fingerprint = machine_fingerprint(config.threads, config.opt_level)
        if config.shared_cache:
            from .shared_cache import SharedTimeCache
            self.cache = SharedTimeCache(config.shared_cache)
        else:
            self.cache = TimeCache(config.cache_dir, config.cache_flush_every) if config.cache_dir else None
        self._pool: Optional[WorkerPool] = None
        self._pool_lock = threading.Lock()
        self._refs: "OrderedDict[str, List[np.ndarray]]" = OrderedDict()
        # Where measuring time goes (seconds summed over measurements), for benchmarks.
        self.counts: Dict[str, float] = {"measured": 0, "cache_hits": 0, "script_s": 0.0, "transform_s": 0.0,
                                         "compile_s": 0.0, "run_s": 0.0, "wall_s": 0.0,
                                         "internal_errors": 0, "timeout_retries": 0}

    @property
    def pool(self) -> WorkerPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = WorkerPool(self.cfg.threads, self.cfg.workers, self.cfg.max_jobs_per_worker,
                                        self.cfg.worker_memory_gb)
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self.cache is not None:
            self.cache.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- public -----------------------------------------------------------------------
    def baseline(self, program: Program) -> Measurement:
        return self.measure(program, Schedule.empty(program))

    def measure(self, program: Program, schedule: Schedule) -> Measurement:
        """Measure one schedule (a cache hit compiles nothing).

        Raises ScheduleError for a schedule that does not fit the program and
        MlirInputError when the untransformed program itself cannot run.  A bug
        of the harness is not raised: it is an ``internal_error`` measurement."""
        schedule = schedule.for_program(program)
        text = str(schedule)
        key = (program.hash, text, self.fingerprint)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.counts["cache_hits"] += 1
                return hit
        if schedule.is_empty:
            return self._run_baseline(program)[0]
        t = time.perf_counter()
        try:
            script = build_script(program, schedule, self.actions)
        except ScheduleError:
            raise  # the schedule is invalid: the caller's to handle
        except Exception:
            return self._record(program, text, {"status": INTERNAL_ERROR, "message":
                                                f"internal error while building the transform script:\n"
                                                f"{traceback.format_exc()}"})
        self.counts["script_s"] += time.perf_counter() - t
        try:
            ref = self._reference(program)
        except _HarnessFailure as e:  # the baseline met a bug of ours (logged and counted once)
            return dataclasses.replace(e.measurement, schedule=text)
        res = self._job(program, script, reference=ref)
        return self._record(program, text, res)

    def evaluate(self, program: Program, schedule: Schedule) -> Result:
        base = self.baseline(program)
        if base.status == INTERNAL_ERROR:  # no reference to check against: the schedule shares the error
            return Result(base, dataclasses.replace(base, schedule=str(schedule.for_program(program))))
        if not base.ok:
            raise MlirInputError(program.source, f"the untransformed program does not run: {base.status}: "
                                 f"{base.message}")
        return Result(base, self.measure(program, schedule))

    # --- internals ----------------------------------------------------------------------
    def _job(self, program: Program, script: Optional[Script], reference=None, want_output=False) -> dict:
        c = self.cfg
        job = {"program": program.text, "func": program.func_name, "inputs": program.inputs,
               "outputs": program.outputs, "script": script.text if script else None,
               "parallel": bool(script and script.parallel), "repetitions": c.repetitions, "warmup": c.warmup,
               "warmup_s": c.warmup_s,
               "min_sample_s": c.min_sample_s, "seed": c.seed, "reference": reference,
               "want_output": want_output, "rtol": c.rtol, "atol": c.atol, "opt_level": c.opt_level}
        res = self._run(job)
        if res["status"] == TIMEOUT:  # perhaps a busy moment of the machine: once more before it is cached
            self.counts["timeout_retries"] += 1
            res = self._run(job)
            if res["status"] == TIMEOUT:
                res["message"] += " (twice)"
        if res.get("where"):
            res["message"] = f"{_culprit(program, res['where'])}: {res['message']}"
        # compile_s as reported includes the transform; counted here without it.
        self.counts["compile_s"] += (res.get("compile_s") or 0.0) - (res.get("transform_s") or 0.0)
        return res

    def _run(self, job: dict) -> dict:
        res = self.pool.run(job, self.cfg.compile_timeout_s, self.cfg.run_timeout_s)
        self.counts["measured"] += 1
        for k in ("transform_s", "run_s", "wall_s"):
            self.counts[k] += res.get(k) or 0.0
        return res

    def _record(self, program: Program, schedule_text: str, res: dict, store: bool = True) -> Measurement:
        m = Measurement(program_hash=program.hash, schedule=schedule_text, fingerprint=self.fingerprint,
                        status=res["status"], time_s=res.get("time_s"), compile_s=res.get("compile_s"),
                        message=res.get("message", ""), date=now(), program_name=program.name,
                        threads=self.cfg.threads, max_error=res.get("max_error"))
        if m.status == INTERNAL_ERROR:  # our bug, not the schedule's: told, counted, never cached
            self.counts["internal_errors"] += 1
            log.error("internal error measuring %s [%s]: %s", program.name or program.hash, schedule_text,
                      m.message)
        elif store and self.cache is not None:
            self.cache.put(m)
        return m

    def _run_baseline(self, program: Program, record_ok: bool = True):
        """Run the untransformed program; keep its outputs as the reference.
        Returns (measurement, outputs or None). A failure is always recorded."""
        res = self._job(program, None, want_output=True)
        outputs = res.pop("outputs", None) if res["status"] == OK else None
        if outputs is not None:
            self._keep_reference(program, outputs)
        m = self._record(program, str(Schedule.empty(program)), res, store=record_ok or outputs is None)
        return m, outputs

    def _ref_path(self, program: Program) -> Optional[str]:
        if not self.cfg.cache_dir:
            return None
        return os.path.join(self.cfg.cache_dir, "references", f"{program.hash}-seed{self.cfg.seed}.npz")

    def _keep_reference(self, program: Program, outputs: List[np.ndarray]) -> None:
        self._refs[program.hash] = outputs
        self._refs.move_to_end(program.hash)
        while len(self._refs) > 16:  # bounded: references of big programs are MBs
            self._refs.popitem(last=False)
        path = self._ref_path(program)
        if path and not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + f".{os.getpid()}.tmp.npz"
            np.savez(tmp, *outputs)
            os.replace(tmp, path)

    def _reference(self, program: Program) -> List[np.ndarray]:
        ref = self._refs.get(program.hash)
        if ref is not None:
            return ref
        path = self._ref_path(program)
        if path and os.path.exists(path):
            try:
                with np.load(path) as z:
                    ref = [z[f"arr_{i}"] for i in range(len(z.files))]
                self._refs[program.hash] = ref
                return ref
            except Exception:
                pass  # unreadable reference: measure the baseline again
        # A baseline already cached (its outputs lost) is not recorded twice.
        cached = self.cache is not None and self.cache.get(
            (program.hash, str(Schedule.empty(program)), self.fingerprint)) is not None
        m, outputs = self._run_baseline(program, record_ok=not cached)
        if m.status == INTERNAL_ERROR:
            raise _HarnessFailure(m)
        if outputs is None:
            raise MlirInputError(program.source, f"the untransformed program does not run: {m.status}: {m.message}")
        return outputs


_NAME_LOC = re.compile(r'^loc\("([^"]*)"\)$')


def _culprit(program: Program, where: str) -> str:
    """Who a failure belongs to: the action named by a transform op's location,
    else the program op at the reported line of the program text."""
    m = _NAME_LOC.match(where.strip())
    if m:
        return m.group(1)
    line = line_of(where)
    if line is not None:
        tag = program.tag_at_line(line)
        if tag:
            return f"{tag} (the schedule of this op)"
    return where
