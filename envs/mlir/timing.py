"""How a run is timed: one routine for our code (the worker) and for PyTorch (the twins).

A CPU that was idle, or busy compiling, runs the first calls of a program slowly: on
the AVX2-only AMD EPYC the first call after a compile took 1.7-8.3x the steady time, and
up to 13 ms of back-to-back calls passed before they came within 10% of it
(`bench/warmup.py`).  One warm-up call therefore timed fast programs x1.25-1.42 slower
than they run in a model (median; a depthwise conv x2.4), and PyTorch (three warm-up
calls) and our code (one) were timed on different parts of that ramp.  So the warm-up
runs for a time (`MeasureConfig.warmup_s`), the same for both.
"""
from __future__ import annotations

import time
from typing import Callable, List


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """A call of `fn` that returns the seconds it took."""
    def call() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return call


def sample_times(call: Callable[[], float], repetitions: int, warmup: int = 1, warmup_s: float = 0.0,
                 min_sample_s: float = 1e-3) -> List[float]:
    """Seconds per call of `repetitions` timed samples of `call` (which returns the seconds
    one call took).  First untimed calls, at least `warmup` (and at least one) and until
    `warmup_s` has passed since the first began (a slow program pays nothing extra); then each
    sample averages as many calls as fill `min_sample_s` (up to 1000), judged by the last
    warm-up call (the first is the slowest)."""
    t0 = time.perf_counter()
    last, calls = call(), 1
    while calls < warmup or time.perf_counter() - t0 < warmup_s:
        last, calls = call(), calls + 1
    batch = max(1, min(1000, int(min_sample_s / max(last, 1e-9))))
    return [sum(call() for _ in range(batch)) / batch for _ in range(repetitions)]
