"""python -m envs.mlir FILE.mlir [--schedule TEXT] [--json]

Lists the ops of a Linalg program with their loops and types, times the
untransformed program and, with --schedule, applies, checks and times the
schedule and prints the speedup and status.  With --json, one JSON object is
printed last on stdout.  Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .cache import default_cache_dir
from .config import MeasureConfig


def main(argv=None) -> int:
    default = {f.name: f.default for f in dataclasses.fields(MeasureConfig)}
    cache = default_cache_dir()
    ap = argparse.ArgumentParser(prog="python -m envs.mlir", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="an .mlir file with one public function over static-shape tensors")
    ap.add_argument("--schedule", help='e.g. "operation_1: TP(128,0,0) T(8,16,1) V" (ops not named: NT)')
    ap.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    ap.add_argument("--threads", type=int, help="OpenMP threads (default: the CPUs this process may use)")
    ap.add_argument("--repetitions", type=int, default=default["repetitions"],
                    help="timed runs; the median is reported (default %(default)s)")
    ap.add_argument("--cache-dir", default=cache, help=f"Parquet time cache (default {cache}; $MLIR_RL_CACHE)")
    ap.add_argument("--no-cache", action="store_true", help="measure again; do not read or write the cache")
    ap.add_argument("--compile-timeout", type=float, default=default["compile_timeout_s"],
                    help="seconds (default %(default)s)")
    ap.add_argument("--run-timeout", type=float, default=default["run_timeout_s"], help="seconds (default %(default)s)")
    ap.add_argument("--print-script", action="store_true", help="print the generated transform script")
    ap.add_argument("-o", "--output", help="write the transformed module (and its script beside it)")
    args = ap.parse_args(argv)

    from .config import available_cpus
    from .errors import MlirInputError, ScheduleError
    from .measure import Measurer
    from .program import Program
    from .schedule import Schedule
    from .transform import build_script, write_transformed

    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    try:
        cfg = MeasureConfig(threads=args.threads or available_cpus(), repetitions=args.repetitions,
                            cache_dir="" if args.no_cache else args.cache_dir,
                            compile_timeout_s=args.compile_timeout, run_timeout_s=args.run_timeout)
        program = Program.from_file(args.file)
        schedule = Schedule.parse(args.schedule).for_program(program) if args.schedule else None
        script = build_script(program, schedule) if schedule is not None else None
    except (MlirInputError, ScheduleError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say(program.describe())
    if args.print_script and script is not None:
        say(script.text)
    out = {"file": args.file, "program_hash": program.hash, "threads": cfg.threads}
    with Measurer(cfg) as m:
        try:
            base = m.baseline(program)
        except MlirInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        out.update(baseline_s=base.time_s, baseline_status=base.status)
        if not base.ok:
            print(f"error: {args.file}: the untransformed program does not run: {base.status}: {base.message}",
                  file=sys.stderr)
            if args.json:
                print(json.dumps(out))
            return 2
        say(f"baseline: {base.time_s * 1e3:.3f} ms{' (cached)' if base.cache_hit else ''}")
        status, correct = base.status, True
        out.update(scheduled_s=None, speedup=None, schedule=None)
        if schedule is not None:
            r = m.evaluate(program, schedule)
            s = r.measurement
            status, correct = s.status, s.status == "ok"
            out.update(scheduled_s=s.time_s, speedup=r.speedup, schedule=str(schedule),
                       compile_s=s.compile_s, message=s.message, cache_hit=s.cache_hit, max_error=s.max_error)
            say(f"schedule: {schedule}")
            if s.ok:
                say(f"scheduled: {s.time_s * 1e3:.3f} ms  speedup x{r.speedup:.2f}  status {s.status}"
                    f"{' (cached)' if s.cache_hit else f'  compile {s.compile_s:.2f} s'}")
            else:
                say(f"status: {s.status}: {s.message}")
            if args.output and script is not None:
                write_transformed(program, script, args.output)
                say(f"wrote {args.output} and {args.output}.transform.mlir")
        out.update(status=status, correct=correct)
    if args.json:
        print(json.dumps(out))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
