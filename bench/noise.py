"""How much one schedule's time varies over fresh measurements, and what it comes from (a benchmark).

The same schedule, measured again, comes back with another time; a best-of-k then picks
by luck among schedules within that spread.  For each case of `bench/warmup.py` (training
programs with hand schedules; never the eval split):

1. *worker*: `--rounds` fresh measurements through the real worker pool (a fresh compile,
   fresh buffers, `sample_times` as in training), the cases in turn each round, each with
   `--samples` timed samples, so that estimators can be compared on the same runs: the
   median of the first 5 samples (the worker's own: `MeasureConfig.repetitions`), the minimum
   of those 5, and the median and minimum of all of them.
2. *placement*: one compile in this process, then per round (a) the same buffers every round,
   (b) fresh buffers (`compile.make_inputs`, freed in between), (c) fresh buffers backed by
   2 MB huge pages (`madvise(MADV_HUGEPAGE)`; this machine's THP setting is `madvise`):
   if where the buffers land in physical memory (cache-set conflicts of 4 KB pages) made the
   noise, (a) and (c) would vary less than (b).

Spread: p90/p10 and max/min of each estimator over the rounds.

    python bench/noise.py                 # 2 threads, 20 rounds
Writes bench/results/noise.json and noise.png (each round's time over the case's median).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from warmup import CASES  # noqa: E402

HUGE = 2 << 20


def huge_empty(shape, dtype, offset: int = 0) -> np.ndarray:
    """Like `compile.aligned_empty`, but on 2 MB-aligned memory advised to be huge pages."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    size = -(-max(n, 1) // HUGE) * HUGE
    m = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(m, np.uint8)
    start = (-raw.ctypes.data) % HUGE  # a multiple of 4 KB: mmap returns whole pages
    m.madvise(mmap.MADV_HUGEPAGE, start, size)
    raw[start:start + size] = 0  # fault the pages in now, not in the first timed call
    return raw[start + offset:start + offset + n].view(dt).reshape(tuple(shape))


def anon_huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages"))


def spread(xs):
    p10, p50, p90 = np.percentile(xs, [10, 50, 90])
    return {"median_s": float(p50), "p90_over_p10": float(p90 / p10), "max_over_min": float(max(xs) / min(xs))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--samples", type=int, default=20, help="timed samples per worker measurement")
    ap.add_argument("--pause-s", type=float, default=0.1, help="idle time before each in-process timing")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "noise.json"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("KMP_BLOCKTIME", "1")
    from envs.mlir import MeasureConfig, Measurer, Program, Schedule
    from envs.mlir import compile as cc
    from envs.mlir.timing import sample_times
    from envs.mlir.transform import build_script
    from envs.suites import load_suite, suite_path
    rows = {b.name: b for b in load_suite(suite_path("train"))}
    c = MeasureConfig(threads=args.threads, repetitions=args.samples, cache_dir="")
    k = MeasureConfig().repetitions
    cases = []
    for name, sched in CASES:
        program = Program.from_text(rows[name].mlir, name)
        cases.append((name, sched, program, build_script(program, Schedule.parse(sched).for_program(program))))

    # 1. the worker: fresh compiles and buffers, the cases in turn each round
    worker = {name: [] for name, *_ in cases}
    t0 = time.perf_counter()
    with Measurer(c) as m:
        for r in range(args.rounds):
            for name, _, program, script in cases:
                res = m._job(program, script)  # the worker's own job: raw samples, no cache
                if res["status"] != "ok":
                    raise SystemExit(f"{name}: {res['status']}: {res.get('message', '')[:300]}")
                worker[name].append(res["times"])
            print(f"worker round {r + 1}/{args.rounds} ({time.perf_counter() - t0:.0f} s)", flush=True)
    estimators = {f"median of {k}": lambda x: statistics.median(x[:k]), f"min of {k}": lambda x: min(x[:k]),
                  f"median of {args.samples}": statistics.median, f"min of {args.samples}": min}

    # 2. placement: one engine, three kinds of buffers, in turn each round
    placement = {}
    huge_kb = 0
    for name, _, program, script in cases:
        eng, ctx, _, _ = cc.compile_program(program.text, program.func_name, program.inputs, program.outputs,
                                            script.text if script else None, bool(script and script.parallel),
                                            c.opt_level, cc.find_openmp())
        kept = cc.Runner(eng, cc.make_inputs(program.inputs, c.seed), program.outputs)
        got = {"same buffers": [], "fresh buffers": [], "fresh huge pages": []}
        plain = cc.aligned_empty  # make_inputs and Runner allocate through it: swapped per kind, restored after
        try:
            for _ in range(args.rounds):
                for kind in got:
                    time.sleep(args.pause_s)
                    if kind == "same buffers":
                        r = kept
                    else:
                        cc.aligned_empty = plain if kind == "fresh buffers" else huge_empty
                        before = anon_huge_kb()
                        r = cc.Runner(eng, cc.make_inputs(program.inputs, c.seed), program.outputs)
                        if kind == "fresh huge pages":
                            huge_kb = max(huge_kb, anon_huge_kb() - before)
                    got[kind].append(statistics.median(sample_times(r.run, k, c.warmup, c.warmup_s,
                                                                    c.min_sample_s)))
                    del r
        finally:
            cc.aligned_empty = plain
        del kept, eng, ctx
        placement[name] = got
        print(f"placement {name} done", flush=True)

    # Per case, one series per column: each estimator over the worker's rounds, then each kind of buffers.
    series = {name: {**{e: [f(x) for x in worker[name]] for e, f in estimators.items()}, **placement[name]}
              for name, *_ in cases}
    head = list(series[cases[0][0]])
    out = []
    print(f"\np90/p10 over {args.rounds} rounds (max/min)")
    print(f"{'case':<40}" + "".join(f"{h:>19}" for h in head))
    for name, sched, *_ in cases:
        cells = {h: spread(v) for h, v in series[name].items()}
        out.append({"benchmark": name, "schedule": sched,
                    "worker": {e: cells[e] for e in estimators},
                    "placement": {kind: cells[kind] for kind in placement[name]},
                    "worker_samples": worker[name], "placement_times": placement[name]})
        print(f"{name[:39]:<40}"
              + "".join(f"{c['p90_over_p10']:>11.2f} ({c['max_over_min']:4.2f})" for c in cells.values()))
    med = {h: statistics.median(spread(series[name][h])["p90_over_p10"] for name, *_ in cases) for h in head}
    print(f"{'median p90/p10':<40}" + "".join(f"{v:>19.2f}" for v in med.values()))
    print(f"huge pages in use while a huge-page buffer set was live: {huge_kb} kB")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "rounds": args.rounds, "samples": args.samples,
                   "median_p90_over_p10": med, "huge_pages_kb": huge_kb, "cases": out}, f)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, (name, *_) in enumerate(cases):
        for j, (h, v) in enumerate(series[name].items()):
            mid = statistics.median(v)
            x = i + (j - len(head) / 2) * 0.1
            ax.scatter([x] * len(v), [t / mid for t in v], s=6, color=f"C{j}", label=h if i == 0 else None)
    ax.set_xticks(range(len(out)))
    ax.set_xticklabels([o["benchmark"][:22] for o in out], rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("time / the case's median for that estimator")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
