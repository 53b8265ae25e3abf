"""Schedules of one program timed interleaved in one process (a benchmark, not a test).

For comparing code-generation choices on a shared, noisy machine: every
variant is compiled once, then each round times every variant in turn (as many
calls as fill 20 ms), so that a busy moment of the machine hits them all
alike; the median per variant over the rounds is reported, with GFLOP/s and
the fraction of the machine's FMA peak (measured here). A variant is a
schedule, optionally with code-generation settings after `@`:

    @prefetch=N   software prefetch distance of kernels' strided reads (0: none;
                  default compile.PREFETCH_DISTANCE)
    @offset=B     inputs and outputs B bytes past a cache line (numpy's own
                  buffers start 16 bytes in; default 0)

    python bench/interleave.py bert_base_attention_q_k_v_projection \\
        "operation_1: R(8,32,4)@prefetch=0" "operation_1: R(8,32,4)"
    python bench/interleave.py FILE.mlir "NT" "operation_1: R(8,32,4)@offset=16" --threads 1

PROGRAM is an .mlir file or a benchmark of the train split (the eval split only
with --split eval: no code-generation choice may be made on it).  Every
variant's result is checked against the first's.  Writes
bench/results/interleave.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse_variant(text: str):
    """(schedule text, {setting: int}) of 'SCHEDULE@key=value@...'."""
    sched, *opts = text.split("@")
    settings = {}
    for o in opts:
        key, _, value = o.partition("=")
        if key not in ("prefetch", "offset") or not value.lstrip("-").isdigit():
            raise SystemExit(f"bench/interleave.py: bad setting {o!r} in {text!r}; "
                             "expected @prefetch=N or @offset=B")
        settings[key] = int(value)
    return sched.strip(), settings


def load_program(spec: str, split: str = "train"):
    """(Program, FLOPs or None) of an .mlir file, or of a benchmark of `split` by name."""
    from envs.mlir.program import Program
    from envs.suites import load_suite, suite_path
    if os.path.exists(spec):
        return Program.from_file(spec), None
    bench = load_suite(suite_path(split), [spec])[0]
    return Program.from_text(bench.mlir, bench.name), bench.flops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("program", help="an .mlir file, or a benchmark name of --split")
    ap.add_argument("variants", nargs="+", help="schedules ('NT': untransformed), each optionally @prefetch=N @offset=B")
    ap.add_argument("--split", default="train", choices=("train", "eval"))
    ap.add_argument("--threads", type=int, default=0, help="OpenMP threads (default: the CPUs available)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="bench/results/interleave.json")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from envs.mlir.config import available_cpus
    threads = args.threads or available_cpus()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before the OpenMP runtime loads
    from envs.mlir import compile as C
    from envs.mlir.peak import fma_peak
    from envs.mlir.schedule import Schedule
    from envs.mlir.transform import build_script

    program, flops = load_program(args.program, args.split)
    peak = fma_peak(threads)["gflops"]
    default_prefetch = C.PREFETCH_DISTANCE
    runs = []
    for text, settings in variants:
        schedule = Schedule.empty(program) if text == "NT" else Schedule.parse(text).for_program(program)
        script = build_script(program, schedule)
        C.PREFETCH_DISTANCE = settings.get("prefetch", default_prefetch)
        try:
            engine, ctx, *_ = C.compile_program(program.text, program.func_name, program.inputs, program.outputs,
                                                script.text if script else None, bool(script and script.parallel),
                                                3, C.find_openmp())
        finally:
            C.PREFETCH_DISTANCE = default_prefetch
        offset = settings.get("offset", 0)
        runner = C.Runner(engine, C.make_inputs(program.inputs, 0, offset), program.outputs, offset)
        runner.run()
        runs.append({"variant": text + "".join(f"@{k}={v}" for k, v in settings.items()), "runner": runner,
                     "keep": (engine, ctx), "times": []})
    ref = [o.copy() for o in runs[0]["runner"].outs]
    for _ in range(args.rounds):
        for r in runs:
            n = max(1, min(1000, int(0.02 / max(r["runner"].run(), 1e-7))))
            r["times"].append(sum(r["runner"].run() for _ in range(n)) / n)
    rows = []
    print(f"{program.func_name}: {threads} thread(s), FMA peak {peak:.0f} GFLOP/s, {args.rounds} rounds")
    print(f"{'variant':60s} {'median ms':>10s} {'min':>8s} {'max':>8s} {'GFLOP/s':>8s} {'peak':>5s}  check")
    for r in runs:
        med = statistics.median(r["times"])
        ok, err = C.compare(r["runner"].outs, ref, 1e-3, 1e-5)
        gf = flops / med / 1e9 if flops else None
        rows.append({"variant": r["variant"], "median_s": med, "min_s": min(r["times"]), "max_s": max(r["times"]),
                     "gflops": gf, "peak_fraction": gf / peak if gf else None, "correct": ok, "max_error": err})
        print(f"{r['variant'][:60]:60s} {med * 1e3:10.4f} {min(r['times']) * 1e3:8.4f} {max(r['times']) * 1e3:8.4f} "
              + (f"{gf:8.1f} {gf / peak:5.0%}" if gf else f"{'':8s} {'':5s}") + f"  {'ok' if ok else 'WRONG'}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"program": args.program, "threads": threads, "fma_peak_gflops": peak, "rounds": args.rounds,
                   "flops": flops, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "command": "python bench/interleave.py " + " ".join(argv or sys.argv[1:])}, f, indent=1)
    print(f"wrote {args.out}")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
