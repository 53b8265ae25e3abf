"""Baselines over the same action space: random search and greedy search.

Both spend a budget of measurements (hits of the time cache included, so that
every method is charged the same; a schedule is not measured twice in one search)
on one benchmark and return the best schedule measured.
A trained agent has to beat them at an equal budget.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .mlir import ACTIONS, Action, Program, ProgramState, Schedule, ScheduleError

RECHECK = 3
"""How many of a best-of-k's fastest schedules are measured again before one is picked
(`remeasured_best`)."""


@dataclass
class SearchResult:
    benchmark: str
    schedule: str  # the best schedule measured ("" if none beat the untransformed program)
    speedup: float  # its speedup (1.0: nothing beat the untransformed program)
    measurements: int
    best_so_far: List[float] = field(default_factory=list)  # after each measurement
    trials: List[Tuple[str, float]] = field(default_factory=list)  # each measurement: schedule, speedup (0: failed)

    @classmethod
    def of(cls, benchmark: str, trials: List[Tuple[str, float]]) -> "SearchResult":
        """The result of these measurements in order, (schedule, speedup) each (0: failed)."""
        curve = list(np.maximum.accumulate([max(1.0, s) for _, s in trials])) if trials else []
        best, best_s = max([("", 1.0)] + [t for t in trials if t[1] > 1.0], key=lambda t: t[1])
        return cls(benchmark, best, best_s, len(trials), [float(c) for c in curve], list(trials))

    def best_of(self, k: int) -> Tuple[str, float]:
        """The best (schedule, speedup) among the first `k` measurements ("", 1.0: none beat the untransformed)."""
        return max([("", 1.0)] + [t for t in self.trials[:k] if t[1] > 1.0], key=lambda t: t[1])

    def top_of(self, k: int, n: int = RECHECK) -> List[str]:
        """The `n` fastest distinct schedules among the first `k` measurements that beat the
        untransformed program, fastest first ([]: none did)."""
        out: List[str] = []
        for s, _ in sorted((t for t in self.trials[:k] if t[1] > 1.0), key=lambda t: -t[1]):
            if s not in out:
                out.append(s)
        return out[:n]


def remeasured_best(measurer, program: Program, schedules: Sequence[str], baseline=None, rounds: int = 1):
    """(schedule, measurement) of the fastest of `schedules` measured again by `measurer` (from
    scratch when it keeps no cache; each result checked).  A best-of-k picked on one measurement
    each favours the luckiest: on a microsecond program random search's best of 256, measured
    again, ran slower than its own best of 8 (run G).  So the best few (`top_of`) are measured
    again, `rounds` times in turn (`interleaved`; the median counts), and the fastest correct in
    every round is kept; when none is, the first with its failure (the failure is reported, not
    hidden).  ("", the untransformed program's measurement: `baseline` when the caller has it, so
    that it is not run again) when there is none."""
    if not schedules:
        return "", baseline if baseline is not None else measurer.baseline(program)
    runs = interleaved(measurer, program, {s: s for s in schedules}, max(1, rounds))
    ok = {s: _median(ms) for s, ms in runs.items() if all(m.ok for m in ms)}
    if not ok:
        first = schedules[0]
        return first, next(m for m in runs[first] if not m.ok)
    best = min(ok, key=lambda s: ok[s].time_s)
    return best, ok[best]


def _median(ms: list):
    """One measurement of several (all ok) whose time is their median (the first itself when alone)."""
    if len(ms) == 1:
        return ms[0]
    return dataclasses.replace(ms[0], time_s=float(np.median([m.time_s for m in ms])))


def interleaved(measurer, program: Program, schedules: Dict[str, str], rounds: int) -> Dict[str, list]:
    """Each label's schedule ("": the untransformed program) measured `rounds` times by
    `measurer`, every label once per round in turn, so that a slow moment of the shared machine
    hits them all alike: {label: [measurement per round]}.  Measured one after another at
    different moments instead, the same schedules timed up to 1.56x apart between two runs of the
    stick (G and H)."""
    out: Dict[str, list] = {label: [] for label in schedules}
    for _ in range(rounds):
        for label, text in schedules.items():
            out[label].append(measurer.baseline(program) if not text else
                              measurer.measure(program, Schedule.parse(text)))
    return out


def timed_in_rounds(measurer, program: Program, picks: Dict[str, tuple], rounds: int) -> Dict[str, object]:
    """Each label's pick, (schedule text or "" for the untransformed program, the measurement it was
    picked on), timed `rounds` times more (`interleaved`, every pick in turn each round): per label
    a measurement whose time is the median of those rounds, and not the re-measure it was picked on
    (which favours it); a failure in any round, or in the pick's own measurement, is its result."""
    runs = interleaved(measurer, program, {k: s for k, (s, m) in picks.items() if m.ok}, rounds)
    out = {}
    for k, (_, m) in picks.items():
        bad = [x for x in runs.get(k, []) if not x.ok] or ([] if m.ok else [m])
        out[k] = bad[0] if bad else _median(runs[k])
    return out


def random_search(env, benchmark: str, budget: int, seed: int = 0) -> SearchResult:
    """`budget` distinct whole schedules of uniformly sampled valid actions (`sample_schedules`),
    each measured once (`measure_schedules`). A schedule sampled again is not measured again: on
    the eval split's small programs 88-96 of 256 samples repeat an earlier one (relu6, the
    residual add), measurements a search would waste on cache hits."""
    return measure_schedules(env, benchmark, sample_schedules(env, benchmark, budget, seed))


def measure_schedules(env, benchmark: str, schedules: Sequence[Schedule]) -> SearchResult:
    """`schedules` measured in order by `env`'s measurer (its cache included: a hit counts as a
    measurement, so that every method is charged alike)."""
    program = env.load(benchmark)
    base = env.measurer.baseline(program)
    trials = []
    for sched in schedules:
        m = env.measurer.measure(program, sched)
        trials.append((str(sched), base.time_s / m.time_s if m.ok else 0.0))
    return SearchResult.of(benchmark, trials)


def greedy_search(env, benchmark: str, budget: int, candidates: int = 8, seed: int = 0) -> SearchResult:
    """One op at a time (last first), one action at a time: measure the op-ending
    actions without parameters (NT, V) and `candidates` sampled valid actions
    appended to the schedule so far, keep the best, and move to the next op when
    the best one ends the op."""
    rng = np.random.default_rng(seed)
    program = env.load(benchmark)
    layout, cfg = env.layout, env.cfg.actions
    base = env.measurer.baseline(program)
    ps = ProgramState(program, cfg)
    trials: List[Tuple[str, float]] = []
    while not ps.done and len(trials) < budget:
        s = ps.current
        options: List[Tuple[Action, ...]] = [(cls(),) for cls in ACTIONS if cls.ends_op and not cls.heads(
            cfg, layout.L) and cls.available(s, cfg) is None]
        for _ in range(candidates):
            c = layout.sample_actions(ps, rng)
            if c not in options:
                options.append(c)
        scored = []
        for c in options:
            if len(trials) >= budget:
                break
            trial = ps.copy()
            for a in c:
                trial.step(a)
            m = env.measurer.measure(program, trial.schedule())
            s_up = base.time_s / m.time_s if m.ok else 0.0
            scored.append((s_up, c))
            trials.append((str(trial.schedule()), s_up))
        if not scored:
            break
        _, pick = max(scored, key=lambda t: t[0])
        for a in pick:
            ps.step(a)
    return SearchResult.of(benchmark, trials)


def sample_schedules(env, benchmark: str, n: int, seed: int = 0, tries: int = 4) -> List[Schedule]:
    """Up to `n` distinct whole schedules, each an episode of uniformly sampled valid actions,
    without measuring any (pure Python: 2-20 ms a schedule, `bench/sampling.py`)."""
    rng = np.random.default_rng(seed)
    program = env.load(benchmark)
    out, seen = [], set()
    for _ in range(n * tries):
        ps = ProgramState(program, env.cfg.actions)
        while not ps.done:
            for a in env.layout.sample_actions(ps, rng):
                ps.step(a)
        sched = ps.schedule()
        if str(sched) not in seen:
            seen.add(str(sched))
            out.append(sched)
            if len(out) == n:
                break
    return out


def mutate(env, program: Program, schedule: Schedule, rng: np.random.Generator) -> Schedule:
    """`schedule` with one op's actions cut at a random point and the rest sampled again; the other
    ops keep theirs where they still apply (an op after it whose actions no longer fit is sampled)."""
    ps = ProgramState(program, env.cfg.actions)
    j = int(rng.integers(len(ps.order)))
    cut = int(rng.integers(len(schedule.actions(ps.order[j])) + 1))
    while not ps.done:
        tag = ps.order[ps.position]
        acts = schedule.actions(tag)
        mutated = tag == ps.order[j]
        try:
            for a in acts[:cut] if mutated else acts:
                ps.step(a)
        except ScheduleError:
            mutated = True
        if not ps.done and ps.order[ps.position] == tag:
            if not mutated:
                ps.finish_op()
            while not ps.done and ps.order[ps.position] == tag:
                for a in env.layout.sample_actions(ps, rng):
                    ps.step(a)
    return ps.schedule()


def ranked_search(env, benchmark: str, budget: int, model, pool: int = 4096, seed: int = 0,
                  candidates: Optional[Callable[[Program], Sequence[Schedule]]] = None,
                  generations: int = 0, elite: int = 64, refine: int = 0,
                  neighbours: int = 128) -> SearchResult:
    """Sample `pool` schedules (random ones, or those `candidates` gives), rank them by the cost
    model (`envs.cost_model.CostModel`), measure the best `budget` in that order. With
    `generations`, first evolve the pool on the model alone: each generation mutates the `elite`
    best into `pool` // 2 new schedules (`mutate`), as Ansor's evolutionary search does.
    With `refine`, the last `refine` of the `budget` measurements climb from the fastest schedule
    measured so far: each mutates it into up to `neighbours` new schedules and measures the one the
    model ranks first (a local search steered by measurements, where evolving on the model alone
    exploits its errors)."""
    program = env.load(benchmark)
    base = env.measurer.baseline(program)
    scheds = list(candidates(program)) if candidates else sample_schedules(env, benchmark, pool, seed)
    scores = list(model.predict(program, scheds)) if scheds else []
    rng = np.random.default_rng(seed + 1)
    seen = {str(x) for x in scheds}
    for _ in range(generations):
        parents = [scheds[i] for i in np.argsort(scores, kind="stable")[:elite]]
        kids = []
        for _ in range(pool // 2):
            kid = mutate(env, program, parents[int(rng.integers(len(parents)))], rng)
            if str(kid) not in seen:
                seen.add(str(kid))
                kids.append(kid)
        scheds += kids
        scores += list(model.predict(program, kids)) if kids else []
    order = list(np.argsort(scores, kind="stable")) if scheds else []
    trials: List[Tuple[str, float]] = []
    top: Tuple[float, Optional[Schedule]] = (0.0, None)  # the fastest measured, for `refine` to climb from

    def measure(sched: Schedule) -> None:
        nonlocal top
        m = env.measurer.measure(program, sched)
        s_up = base.time_s / m.time_s if m.ok else 0.0
        trials.append((str(sched), s_up))
        if s_up > top[0]:
            top = (s_up, sched)

    refine = min(max(refine, 0), budget)
    for i in order[:budget - refine]:
        measure(scheds[i])
    for _ in range(refine):
        parent = top[1] if top[1] is not None else (scheds[order[0]] if order else None)
        tried, kids = {t[0] for t in trials}, {}
        for _ in range(4 * neighbours if parent is not None else 0):
            kid = mutate(env, program, parent, rng)
            if str(kid) not in tried:
                kids.setdefault(str(kid), kid)
                if len(kids) == neighbours:
                    break
        kids = list(kids.values())
        if not kids:  # the parent's neighbourhood is spent: the next of the model's ranking
            rest = [i for i in order if str(scheds[i]) not in tried]
            if not rest:
                break
            kids = [scheds[rest[0]]]
        measure(kids[int(np.argmin(model.predict(program, kids)))])
    return SearchResult.of(benchmark, trials)
