"""RLlib callbacks: the scheduling metrics, in Tune's results and TensorBoard.

Per episode (on the env runners): its log speedup, status, cache hit, compile
and run seconds, and the best speedup per benchmark in the iteration. Per
iteration (on the driver, `on_train_result`): the geometric-mean speedup of
the iteration's correct episodes, failures by status, cache hit rate, and the
best speedup per benchmark so far, and, when the run validates (RLlib's
evaluation of the greedy policy on held-out training programs), the validation
speedups and their geometric mean ``val_speedup_geomean`` (a failed
measurement scores x0.1; the last value is carried to the iterations between
validations), under ``result["mlir"]``, and as Ray metrics
(``mlir_rl_speedup_geomean``, ``mlir_rl_best_speedup_geomean``, ``mlir_rl_cache_hit_rate``,
``mlir_rl_failures``) for the dashboard.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable

from ray.rllib.callbacks.callbacks import RLlibCallback


def geomean(xs: Iterable[float]) -> float:
    """Geometric mean of the positive values (NaN if none): the one used for every reported speedup."""
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


VAL_METRIC = "val_speedup_geomean"
"""The validation's geometric mean, also at the top level of each result: Tune's checkpoint
manager looks `checkpoint_score_attribute` up in the unflattened result (Ray 2.60), so a
nested ``mlir/val_speedup_geomean`` is never found there and "keep the best 3" keeps the
latest 3 instead."""

FAILED_SCORE = 0.1
"""The validation score of a failed measurement: worse than the untransformed program (x1)."""


def _num(x) -> float:
    """A reduced metric as a number: absent or NaN (a key with no value this iteration) is 0."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if v != v else v


class SchedulingMetrics(RLlibCallback):
    def __init__(self):
        super().__init__()
        self.best: Dict[str, float] = {}
        self.validation: Dict[str, float] = {}
        self.validated_at = 0
        self._gauges = None

    def _export(self, summary: Dict) -> None:
        """The same figures as Ray metrics (Prometheus, the dashboard's Metrics view)."""
        try:
            from ray.util.metrics import Gauge
            if self._gauges is None:
                self._gauges = {k: Gauge(f"mlir_rl_{k}", description=d) for k, d in (
                    ("speedup_geomean", "geometric-mean speedup of the iteration's correct episodes"),
                    ("best_speedup_geomean", "geometric mean over benchmarks of the best speedup so far"),
                    ("cache_hit_rate", "share of the iteration's measurements served by the time cache"),
                    ("failures", "failed measurements in the iteration"))}
            for k, g in self._gauges.items():
                v = sum(summary[k].values()) if k == "failures" else summary[k]
                if v == v:  # not NaN
                    g.set(float(v))
        except Exception:  # metrics are a convenience; never fail a training iteration for them
            pass

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs):
        info = episode.get_infos(-1)
        if not isinstance(info, dict) or "status" not in info:
            return
        log = metrics_logger.log_value
        log(("mlir", "episodes"), 1, reduce="sum")
        log(("mlir", "status", info["status"]), 1, reduce="sum")
        log(("mlir", "cache_hits"), int(bool(info.get("cache_hit"))), reduce="sum")
        log(("mlir", "compile_s"), float(info.get("compile_s") or 0.0), reduce="sum")
        log(("mlir", "run_s"), float(info.get("run_s") or 0.0), reduce="sum")
        if info["status"] == "ok" and info.get("speedup"):
            log(("mlir", "log_speedup_sum"), math.log(info["speedup"]), reduce="sum")
            log(("mlir", "speedup_max", info["benchmark"]), float(info["speedup"]), reduce="max")
        # Per benchmark, what validation scores: the speedup, a failure as FAILED_SCORE.
        ok = info["status"] == "ok" and info.get("speedup")
        log(("mlir", "score", info["benchmark"]), float(info["speedup"]) if ok else FAILED_SCORE, reduce="max")

    def on_train_result(self, *, algorithm=None, metrics_logger=None, result=None, **kwargs):
        m = (result.get("env_runners") or {}).get("mlir") or {}
        episodes = _num(m.get("episodes"))
        status = m.get("status") or {}
        ok = _num(status.get("ok"))
        for bench, s in (m.get("speedup_max") or {}).items():
            if _num(s) > 0:
                self.best[bench] = max(self.best.get(bench, 0.0), _num(s))
        summary = {
            "episodes": episodes,
            "speedup_geomean": math.exp(_num(m.get("log_speedup_sum")) / ok) if ok else float("nan"),
            "best_speedup": dict(self.best),
            "best_speedup_geomean": geomean(self.best.values()),
            # Whatever statuses the episodes logged, but "ok": this side keeps no list of them.
            "failures": {k: _num(v) for k, v in status.items() if k != "ok"},
            "cache_hit_rate": _num(m.get("cache_hits")) / episodes if episodes else float("nan"),
            "compile_s": _num(m.get("compile_s")), "run_s": _num(m.get("run_s")),
        }
        # Validation (RLlib's evaluation on held-out training programs, greedy): its last value is
        # carried between validations, so that every result (and checkpoint) has one.
        scores = (((result.get("evaluation") or {}).get("env_runners") or {}).get("mlir") or {}).get("score")
        # Results between validations may carry the evaluation keys with NaNs: only real values count.
        if scores and all(_num(v) > 0 for v in scores.values()):
            self.validation = {b: _num(v) for b, v in scores.items()}
            self.validated_at = result.get("training_iteration", 0)
        if self.validation:
            summary["val_speedup"] = dict(self.validation)
            summary["val_speedup_geomean"] = geomean(self.validation.values())
            summary["val_iteration"] = self.validated_at
            result[VAL_METRIC] = summary["val_speedup_geomean"]
        result["mlir"] = summary
        self._export(summary)
