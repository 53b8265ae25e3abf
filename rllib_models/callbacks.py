"""RLlib callbacks: the scheduling metrics, in Tune's results and TensorBoard.

Per episode (on the env runners): its log speedup, status, cache hit, compile
and run seconds, and the best speedup per benchmark in the iteration. Per
iteration (on the driver, `on_train_result`): the geometric-mean speedup of
the iteration's correct episodes, failures by status, cache hit rate, and the
best speedup per benchmark so far, under ``result["mlir"]``.
"""
from __future__ import annotations

import math
from typing import Dict

from ray.rllib.callbacks.callbacks import RLlibCallback

STATUSES = ("ok", "wrong_result", "transform_failed", "compile_failed", "crash", "timeout")


class SchedulingMetrics(RLlibCallback):
    def __init__(self):
        super().__init__()
        self.best: Dict[str, float] = {}

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

    def on_train_result(self, *, algorithm=None, metrics_logger=None, result=None, **kwargs):
        m = (result.get("env_runners") or {}).get("mlir") or {}
        episodes = float(m.get("episodes", 0) or 0)
        status = m.get("status") or {}
        ok = float(status.get("ok", 0) or 0)
        for bench, s in (m.get("speedup_max") or {}).items():
            self.best[bench] = max(self.best.get(bench, 0.0), float(s))
        summary = {
            "episodes": episodes,
            "speedup_geomean": math.exp(m["log_speedup_sum"] / ok) if ok and "log_speedup_sum" in m else float("nan"),
            "best_speedup": dict(self.best),
            "best_speedup_geomean": math.exp(sum(math.log(v) for v in self.best.values()) / len(self.best))
            if self.best else float("nan"),
            "failures": {k: float(status.get(k, 0) or 0) for k in STATUSES if k != "ok"},
            "cache_hit_rate": float(m.get("cache_hits", 0) or 0) / episodes if episodes else float("nan"),
            "compile_s": float(m.get("compile_s", 0) or 0), "run_s": float(m.get("run_s", 0) or 0),
        }
        result["mlir"] = summary
