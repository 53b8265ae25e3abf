"""Build benchmark suites.

  python -m envs.suites build [--out-dir DIR] [--max-mflops N] [--check-time]
      the shipped train/eval suites from model layer shapes and imported PyTorch blocks
  python -m envs.suites from-folder DIR -o FILE.parquet [--split NAME] [--check-time]
      a suite from a folder of .mlir files (each checked by the MLIR layer)
  python -m envs.suites list FILE.parquet
  python -m envs.suites holdout NAME [NAME ...]
      the validation programs matched to the training programs named (run.validate.benchmarks)
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from typing import Dict, List

from . import SUITE_DIR, SuiteError, load_suite, matched_holdout, suite_path, write_suite


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in text.lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")


def build_rows(max_flops: int, max_elements: int, with_imports: bool = True) -> List[Dict]:
    """All rows, named, deduplicated (an eval program never equals a train one)."""
    from .models import imported_rows, layer_rows
    rows = layer_rows(max_flops, max_elements) + (imported_rows() if with_imports else [])
    rows.sort(key=lambda r: r["split"] != "train")  # train first: eval duplicates of train are dropped
    seen, out = set(), []
    for r in rows:
        key = hashlib.sha256(r["mlir"].encode()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        r["name"] = f"{_slug(r['source_model'])}_{_slug(r['layer'])}"
        out.append(r)
    names = [r["name"] for r in out]
    assert len(set(names)) == len(names), "benchmark names must be unique"
    return out


def check_rows(rows: List[Dict], threads: int, limit_s: float) -> List[str]:
    """Parse every program and time it untransformed; returns the problems."""
    from envs.mlir import MeasureConfig, Measurer, MlirInputError, Program
    problems = []
    with Measurer(MeasureConfig(threads=threads, repetitions=1, warmup=0)) as m:
        for i, r in enumerate(rows):
            try:
                p = Program.from_text(r["mlir"], r["name"])
                b = m.baseline(p)
            except MlirInputError as e:
                problems.append(str(e))
                continue
            flag = "" if b.ok and b.time_s <= limit_s else "  <-- too slow" if b.ok else f"  <-- {b.status}"
            print(f"  [{i + 1}/{len(rows)}] {r['name']:<55} {len(p.ops):>3} ops  "
                  f"{(b.time_s or 0) * 1e3:8.1f} ms{flag}", flush=True)
            if flag:
                problems.append(f"{r['name']}: {flag.strip('< -')}")
    return problems


def _summary(rows: List[Dict]) -> str:
    fams: Dict[str, int] = {}
    for r in rows:
        fams[r["family"]] = fams.get(r["family"], 0) + 1
    models = sorted({r["source_model"] for r in rows})
    return f"{len(rows)} benchmarks; models: {', '.join(models)}; families: " + \
        ", ".join(f"{k} {v}" for k, v in sorted(fams.items()))


def cmd_build(args) -> int:
    t0 = time.time()
    rows = build_rows(int(args.max_mflops * 1e6), args.max_elements)
    if args.check_time:
        problems = check_rows(rows, args.threads, args.limit_s)
        if problems:
            print("problems:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
    os.makedirs(args.out_dir, exist_ok=True)
    for split in ("train", "eval"):
        part = [dict(r, split=split) for r in rows if r["split"] == split]
        path = os.path.join(args.out_dir, f"{split}.parquet")
        write_suite(part, path)
        print(f"wrote {path}: {_summary(part)} ({os.path.getsize(path) / 1024:.0f} KiB)")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def cmd_from_folder(args) -> int:
    from envs.mlir import MlirInputError, Program
    files = sorted(f for f in os.listdir(args.folder) if f.endswith(".mlir")) if os.path.isdir(args.folder) else None
    if files is None:
        print(f"error: {args.folder}: not a folder", file=sys.stderr)
        return 2
    rows, bad = [], []
    model = os.path.basename(os.path.normpath(args.folder))
    for f in files:
        path = os.path.join(args.folder, f)
        try:
            p = Program.from_file(path)
        except MlirInputError as e:
            bad.append(str(e))
            continue
        nbytes = sum(4 * math.prod(t.shape) for t in p.inputs + p.outputs)
        rows.append(dict(name=_slug(os.path.splitext(f)[0]), split=args.split, family="user", source_model=model,
                         layer=os.path.splitext(f)[0], mlir=open(path).read(), flops=sum(o.flops for o in p.ops),
                         bytes=nbytes, params="{}"))
    for b in bad:
        print(f"skipped: {b}", file=sys.stderr)
    if not rows:
        print(f"error: {args.folder}: no usable .mlir file ({len(files)} found)", file=sys.stderr)
        return 2
    if args.check_time:
        problems = check_rows(rows, args.threads, args.limit_s)
        for pr in problems:
            print(f"warning: {pr}", file=sys.stderr)
    write_suite(rows, args.output)
    print(f"wrote {args.output}: {_summary(rows)}")
    return 0


def cmd_list(args) -> int:
    for b in load_suite(args.file):
        print(f"{b.split:<6} {b.name:<55} {b.family:<24} {b.source_model:<12} {b.flops / 1e6:8.1f} MFLOP")
    return 0


def cmd_holdout(args) -> int:
    load_suite(suite_path("train"), args.names)  # an unknown name: an error naming the suite file
    rows = load_suite(suite_path("train"))
    names = matched_holdout(args.names, rows)
    by = {b.name: b for b in rows}
    for n in names:
        print(f"{n:<55} {by[n].family:<24} {by[n].layer}")
    print("benchmarks: [" + ", ".join(names) + "]")
    return 0


def main(argv=None) -> int:
    from envs.mlir.config import available_cpus
    ap = argparse.ArgumentParser(prog="python -m envs.suites", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the shipped train/eval suites")
    b.add_argument("--out-dir", default=SUITE_DIR)
    b.add_argument("--max-mflops", type=float, default=64.0, help="FLOP budget of one untransformed program")
    b.add_argument("--max-elements", type=int, default=1 << 20, help="budget of the memory-bound families")
    f = sub.add_parser("from-folder", help="a suite from a folder of .mlir files")
    f.add_argument("folder")
    f.add_argument("-o", "--output", required=True)
    f.add_argument("--split", default="train")
    for p in (b, f):
        p.add_argument("--check-time", action="store_true", help="time every untransformed program")
        p.add_argument("--limit-s", type=float, default=0.5, help="with --check-time: the most one may take")
        p.add_argument("--threads", type=int, default=available_cpus())
    lp = sub.add_parser("list", help="list a suite file")
    lp.add_argument("file")
    hp = sub.add_parser("holdout", help="validation programs matched to the training programs named")
    hp.add_argument("names", nargs="+", metavar="NAME", help="programs of the train split trained on")
    args = ap.parse_args(argv)
    try:
        return {"build": cmd_build, "from-folder": cmd_from_folder, "list": cmd_list, "holdout": cmd_holdout}[args.cmd](args)
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
