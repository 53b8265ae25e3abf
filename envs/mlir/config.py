"""Every setting of the MLIR layer, in three typed dataclasses.

`FeatureConfig` fixes the feature-vector layout, `ActionConfig` the action
space, `MeasureConfig` how programs are compiled, run, timed and cached.
Each is validated in `__post_init__`, naming the setting at fault.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Tuple


def _check(cond: bool, name: str, why: str) -> None:
    if not cond:
        raise ValueError(f"invalid setting {name}: {why}")


def available_cpus() -> int:
    """The CPUs this process may run on (affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def _host_vector_width() -> int:  # reads /proc/cpuinfo: once
    from .peak import vector_width
    return vector_width()


@functools.lru_cache(maxsize=None)  # called for every loop of every masked step
def _loop_candidates(bound: int, n: int, vw: int) -> Tuple[int, ...]:
    import math
    small = [c for c in dict.fromkeys((1, 2, 4, 6, 8, vw, 2 * vw)) if c < bound]
    divisors = [d for d in range(3, bound) if bound % d == 0 and d not in small]
    # Targets in order of use: half the loop (one tile per thread of two), cache-sized tiles,
    # then ever smaller fractions; each takes the divisor nearest it within a factor of 2.
    targets = [bound / 2, 256, 128, 64] + [bound / 2 ** k for k in range(2, 12)]
    large: list = []
    for t in targets:
        if len(small) + len(large) >= n or not divisors:
            break
        d = min(divisors, key=lambda x: abs(math.log(x / t)))
        if abs(math.log(d / t)) <= math.log(2) and d not in large:
            large.append(d)
            divisors.remove(d)
    return (0,) + tuple(sorted(small + large)[:n])


@dataclass(frozen=True)
class FeatureConfig:
    """Sizes of OpFeatures / ProducerOpFeatures / ActionHistory (MLIR-RL's layout)."""

    max_loops: int = 12
    """Loops per op; an op with more cannot be featurized."""
    max_loads: int = 7
    """Load (input) access matrices per op."""
    max_access_dims: int = 12
    """Rows (tensor dimensions) of one access matrix."""
    max_bound: int = 1 << 14
    """Upper bounds are normalized as log2(bound) / log2(max_bound), clipped to 1."""

    def __post_init__(self):
        for name in ("max_loops", "max_loads", "max_access_dims"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")
        _check(self.max_bound >= 2, "max_bound", "must be >= 2")


@dataclass(frozen=True)
class ActionConfig:
    """The action space: tile-size candidates, limits."""

    tile_sizes: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Non-zero tile-size candidates (0 = untiled is always a choice)."""
    max_actions_per_op: int = 6
    """Actions per op, the ending NT or V included."""
    vector_max_elements: int = 512
    """V is allowed when every operand's vector has at most this many elements."""
    unroll_factors: Tuple[int, ...] = (2, 4, 8)
    """Choices of U."""
    tile_candidates: str = "fixed"
    """'fixed': every loop's tile head picks from `tile_choices`; 'per_loop': from candidates
    derived from the loop's bound and the vector width (`loop_tile_choices`)."""
    per_loop_choices: int = 12
    """With 'per_loop': choices of a tile head (0 = untiled included)."""
    vector_width: int = 0
    """f32 lanes of the vector unit the candidates follow (0: the host's: AVX-512 16, AVX2 8)."""
    register_tiles: Tuple[Tuple[int, int], ...] = (
        (1, 1), (1, 4), (2, 2), (2, 3), (2, 4), (4, 1), (4, 2), (4, 3), (4, 4), (6, 1), (6, 2), (6, 4),
        (8, 1), (8, 2), (8, 3), (12, 2), (14, 2))
    """R's choices: (rows, vectors) of the output held in registers (those exceeding the host's
    vector registers are masked).  3 vectors since R splits them into native vectors
    (`R.emit_native_split`; left whole they ran 2-4x slower): 4x3 fills AVX2's 16 registers
    with no row tail on 8, 16 or 32 rows; on four training matmuls (bench/register_tiles.py, two
    runs) it was the best tile on one or two and within 5-23% of the best on the others.  8x3 is
    AVX-512's, not measured (no AVX-512 machine here).  Chosen on matmuls of bench/ and the
    training split only (a (16, 1) once added after looking at an eval program was removed)."""
    register_kc: Tuple[int, ...] = (0, 32, 64, 128, 256)
    """R's reduction blocks (0: none; a block must divide the loop).  Blocks whose slice of B
    fits L2 won on training programs: 64 on a 3x3 conv of 512 channels, 256 on an 8-row matmul."""

    def __post_init__(self):
        _check(len(self.tile_sizes) >= 1, "tile_sizes", "needs at least one size")
        _check(all(isinstance(s, int) and s > 0 for s in self.tile_sizes), "tile_sizes",
               f"sizes must be positive integers, got {self.tile_sizes}")
        _check(list(self.tile_sizes) == sorted(set(self.tile_sizes)), "tile_sizes",
               "sizes must be increasing and distinct")
        _check(self.max_actions_per_op >= 1, "max_actions_per_op", "must be >= 1")
        _check(self.vector_max_elements >= 1, "vector_max_elements", "must be >= 1")
        _check(all(f >= 2 for f in self.unroll_factors) and len(self.unroll_factors) >= 1,
               "unroll_factors", "factors must be >= 2")
        _check(self.tile_candidates in ("fixed", "per_loop"), "tile_candidates",
               f"'fixed' or 'per_loop', got {self.tile_candidates!r}")
        _check(self.per_loop_choices >= 8, "per_loop_choices", "must be >= 8")
        _check(self.vector_width >= 0, "vector_width", "must be >= 0 (0: the host's)")
        _check(len(self.register_tiles) >= 1 and all(len(t) == 2 and t[0] >= 1 and t[1] >= 1
                                                     for t in self.register_tiles),
               "register_tiles", f"needs (rows, vectors) pairs of positive integers, got {self.register_tiles}")
        _check(len(set(self.register_tiles)) == len(self.register_tiles), "register_tiles", "has duplicates")
        _check(len(self.register_kc) >= 1 and self.register_kc[0] == 0 and
               all(k >= max(self.unroll_factors) for k in self.register_kc[1:]) and
               list(self.register_kc) == sorted(set(self.register_kc)), "register_kc",
               f"needs 0 (none) first, then increasing blocks >= the largest unroll factor, got {self.register_kc}")

    @property
    def tile_choices(self) -> Tuple[int, ...]:
        """The per-loop choices a tile head picks from: 0 (untiled) then tile_sizes."""
        return (0,) + tuple(self.tile_sizes)

    @property
    def register_width(self) -> int:
        """f32 lanes of one vector register: `vector_width`, else the host's."""
        return self.vector_width or _host_vector_width()

    @property
    def n_tile_choices(self) -> int:
        """Choices of one tile head."""
        return len(self.tile_choices) if self.tile_candidates == "fixed" else self.per_loop_choices

    @property
    def max_tile_size(self) -> int:
        """The tile size ActionHistory's scale ends at (larger ones read as 1)."""
        return max(self.tile_sizes) if self.tile_candidates == "fixed" else 4096

    def loop_tile_choices(self, bound: int) -> Tuple[int, ...]:
        """What a tile head's choices mean for a loop of `bound` iterations: 0 (untiled) first.
        With 'per_loop' (shorter than `n_tile_choices` when the loop is short; the rest is masked):
        register-tile sizes (1, 2, 4, 6, 8, one and two vectors), then cache/thread tiles: the
        divisors of the bound nearest to bound/2, /4, /8, ... (no remainder to peel), all below
        the bound."""
        if self.tile_candidates == "fixed":
            return self.tile_choices
        return _loop_candidates(bound, self.per_loop_choices - 1, self.register_width)


@dataclass(frozen=True)
class MeasureConfig:
    """How programs are compiled, run, timed, checked and cached."""

    repetitions: int = 5
    """Timed runs; the reported time is their median."""
    warmup: int = 1
    """Untimed runs before the timed ones (at least one is always made)."""
    warmup_s: float = 0.02
    """...and untimed runs until this long after the first began: the first calls after a
    compile run slower than the steady ones, the first 1.7-8.3x (`envs.mlir.timing`)."""
    min_sample_s: float = 1e-3
    """A timed sample of a faster program averages as many calls as fill this (up to 1000)."""
    threads: int = field(default_factory=available_cpus)
    """OpenMP threads for parallel code (default: the CPUs this process may use)."""
    workers: int = 1
    """Worker processes in the pool (more than one competes for cores while timing)."""
    compile_timeout_s: float = 120.0
    """Transform + lowering + JIT limit per measurement."""
    run_timeout_s: float = 60.0
    """Limit for the warm-up and timed runs of one measurement."""
    seed: int = 0
    """Seed of the random inputs."""
    rtol: float = 1e-3
    """A float result is correct when max|out - ref| <= rtol * max|ref| + atol."""
    atol: float = 1e-5
    """Absolute part of the tolerance (for all-zero references)."""
    opt_level: int = 3
    """LLVM optimization level of the JIT."""
    cache_dir: str = ""
    """Parquet time cache folder; empty disables the cache."""
    shared_cache: str = ""
    """Name of a cluster-wide cache actor (`envs.mlir.shared_cache`) to use instead of
    `cache_dir`'s files; `cache_dir` then only keeps this node's reference outputs."""
    cache_flush_every: int = 8
    """Cache records buffered before a new Parquet file is written."""
    max_jobs_per_worker: int = 200
    """A worker is replaced after this many jobs, bounding JIT memory growth."""
    worker_memory_gb: float = 8.0
    """Address-space limit of a worker (0: none): a compile that blows up dies as a crash."""

    def __post_init__(self):
        _check(self.repetitions >= 1, "repetitions", "must be >= 1")
        _check(self.warmup >= 0, "warmup", "must be >= 0")
        _check(self.warmup_s >= 0, "warmup_s", "must be >= 0")
        _check(self.min_sample_s >= 0, "min_sample_s", "must be >= 0")
        _check(self.threads >= 1, "threads", "must be >= 1")
        _check(self.workers >= 1, "workers", "must be >= 1")
        _check(self.compile_timeout_s > 0, "compile_timeout_s", "must be > 0")
        _check(self.run_timeout_s > 0, "run_timeout_s", "must be > 0")
        _check(self.rtol >= 0 and self.atol >= 0, "rtol/atol", "must be >= 0")
        _check(self.opt_level in (0, 1, 2, 3), "opt_level", "must be 0..3")
        _check(self.cache_flush_every >= 1, "cache_flush_every", "must be >= 1")
        _check(self.max_jobs_per_worker >= 1, "max_jobs_per_worker", "must be >= 1")
        _check(self.worker_memory_gb >= 0, "worker_memory_gb", "must be >= 0 (0: no limit)")
