"""The measuring stick: our code against PyTorch and the machine's FMA peak.

For every benchmark of the eval split and every imported block: the same
computation in PyTorch (`envs.suites.torch_twins`: built from the row's
generator parameters, or the very nn.Module an imported block came from, run
eagerly as a user runs it; its result checked against ours on the same
inputs), timed in this run with the same threads as our code (before and
after the searches; the faster counts); the untransformed
program; random search and greedy search (best of the first 8 and of all
`--budget` measurements); and, with `--checkpoint`, the policy (its greedy
episode, and the best of that and 7 distinct sampled ones, at `--temperature`);
with `--cost-model`, the
best 8 of `--pool` random schedules by the cost model (model_8; model_1 its
top pick alone) and of `--policy-pool` schedules of the policy (policy_model_8,
policy_model_1: the agent with its cost model), and policy_climb_8: the model's
best 8 - `--refine` of the policy's, then `--refine` measurements climbing from
the fastest measured (`ranked_search`'s refine). Every method's best few
(3, `envs.search.RECHECK`) are measured again from scratch (no cache) and
checked, and the fastest is picked (on one measurement each, a best of 256
favours the luckiest); each pick is then timed `--rounds` times (3), every
pick in turn in each round so that a slow moment of the machine hits all
alike, and the median is reported. Columns: GFLOP/s, the fraction of the FMA peak (measured here with
an MLIR-generated FMA loop, `envs.mlir.peak`), the ratio to PyTorch (> 1:
faster than PyTorch), geometric means per family and overall.

    python bench/vs_pytorch.py                         # eval split + imported blocks, budget 256
    python bench/vs_pytorch.py --budget 16 --only gpt_2_c_attn_projection
    python bench/vs_pytorch.py --checkpoint DIR        # the policy's columns too
    python bench/vs_pytorch.py --checkpoint DIR --cost-model cost_model.pt   # and the cost model's

Writes bench/results/vs_pytorch.json, vs_pytorch_ratio.png (ratio to PyTorch
per benchmark and method) and vs_pytorch_budget.png (best-so-far ratio to
PyTorch against measurements spent), and prints a table. The JSON is written
after every benchmark too ("complete": false until the end): a run stopped
after an hour keeps what it measured, and `--resume` (same settings) measures
only the benchmarks it lacks; without `--resume` an existing result is first
moved to <stem>.previous.json. Quiet machine advised: the searches and the
timings share its cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COMPUTE_BOUND = ("matmul", "matmul_bias_relu", "batch_matmul", "conv2d", "conv_bias_relu")
"""Families whose target is PyTorch speed and 60% of the FMA peak (issue 9's measuring stick)."""


def bench_rows(only: List[str], split: str = "eval") -> List[Dict]:
    """Eval-split rows and the imported blocks of every split; with split "train", the training
    programs instead (what design decisions may look at: the eval split is for evaluation only)."""
    import pyarrow.parquet as pq
    from envs.suites import measuring_stick_rows, suite_path
    rows = pq.read_table(suite_path("train")).to_pylist() if split == "train" else measuring_stick_rows()
    if only:
        missing = sorted(set(only) - {r["name"] for r in rows})
        if missing:
            raise SystemExit(f"no benchmark named {', '.join(missing)} in the {split} split"
                             + (" or the imported blocks" if split == "eval" else ""))
        rows = [r for r in rows if r["name"] in only]
    return rows


def torch_times_apart(rows: List[Dict], threads: int) -> Dict[str, float]:
    """PyTorch's time of every row, measured in a fresh process that runs nothing else (in
    this one, after our searches, PyTorch's small ops ran up to 2x slower, cause not found)."""
    import subprocess
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{k: r[k] for k in ("name", "family", "params", "mlir")} for r in rows], f)
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-times", f.name, "--threads",
                            str(threads)], capture_output=True, text=True, timeout=1800)
    finally:
        os.unlink(f.name)
    if r.returncode:
        raise SystemExit(f"timing PyTorch failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _torch_times_main(path: str, threads: int) -> None:
    from envs.mlir import Program
    from envs.mlir.compile import make_inputs
    from envs.suites.torch_twins import torch_twin
    with open(path) as f:
        rows = json.load(f)
    out = {}
    for row in rows:
        program = Program.from_text(row["mlir"], row["name"])
        out[row["name"]] = quiet_torch_time(torch_twin(row, make_inputs(program.inputs, 0)), threads)
    print(json.dumps(out))


def quiet_torch_time(twin, threads: int) -> float:
    """PyTorch's time, with the OpenMP threads of our workers (which spin a while after a
    parallel run) and PyTorch's own asleep around it."""
    from envs.suites.torch_twins import time_torch
    time.sleep(0.5)
    t = time_torch(twin, threads, repetitions=9)
    time.sleep(0.5)
    return t


def main() -> int:
    from evaluate import SAMPLE_TEMPERATURE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=256, help="measurements of random and of greedy search")
    ap.add_argument("--threads", type=int, default=0, help="threads of our code and of PyTorch (default: CPUs)")
    ap.add_argument("--checkpoint", default="", help="also the policy of this RLlib checkpoint")
    ap.add_argument("--only", nargs="*", default=[], help="only these benchmarks")
    ap.add_argument("--split", choices=("eval", "train"), default="eval",
                    help="eval (the measuring stick) or train (for design decisions, which may not look at eval)")
    ap.add_argument("--tile-candidates", choices=("fixed", "per_loop"), default="fixed",
                    help="the searches' tile choices (ActionConfig.tile_candidates)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-search", action="store_true",
                    help="the policy alone (with --checkpoint): no random or greedy search")
    ap.add_argument("--no-greedy", action="store_true", help="random search only (halves the time)")
    ap.add_argument("--cost-model", default="",
                    help="also model_8: the best 8 of --pool random schedules by this cost model "
                         "(envs.cost_model), and with --checkpoint policy_model_8: the best 8 of --policy-pool "
                         "schedules of the policy")
    ap.add_argument("--pool", type=int, default=4096,
                    help="random schedules the cost model ranks (4096: chosen on held-out training programs, "
                         "bench/cost_model.py)")
    ap.add_argument("--policy-pool", type=int, default=64, help="policy schedules the cost model ranks")
    ap.add_argument("--temperature", type=float, default=SAMPLE_TEMPERATURE,
                    help=f"the policy's sampled episodes divide its logits by this (default {SAMPLE_TEMPERATURE:g}, "
                         f"evaluate.py's, chosen on validation programs; 1: as trained; its greedy episode stays "
                         f"greedy); for policy_8 and the policy's pool")
    ap.add_argument("--refine", type=int, default=4,
                    help="with --checkpoint and --cost-model, policy_climb_8: of its 8 measurements the last "
                         "REFINE climb from the fastest measured (0: no such column; 4: bench/cost_model.py on "
                         "held-out training programs)")
    ap.add_argument("--cache-dir", default="", help="time cache of the searches (default: the project's)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="each method's pick is timed this many times, all picks in turn each round; the median counts")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "vs_pytorch.json"),
                    help="written after every benchmark (\"complete\": false until the end)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the benchmarks --out already has (same settings) and measure only the others")
    ap.add_argument("--torch-times", default="", help=argparse.SUPPRESS)  # internal: the PyTorch timing process
    ap.add_argument("--replot", action="store_true", help="only print the table and draw the plots of --out again")
    args = ap.parse_args()
    if args.replot:
        with open(args.out) as f:
            result = json.load(f)
        from rllib_models.callbacks import geomean
        result["summary"] = _summary(result["rows"], result["methods"], geomean)  # this version's groups
        _table(result)
        _plots(result, os.path.splitext(args.out)[0])
        return 0
    if args.no_search and not args.checkpoint:
        ap.error("--no-search needs --checkpoint (there would be nothing to compare)")
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    if not 0 <= args.refine <= 8:
        ap.error(f"--refine must be 0 to 8 (of policy_climb_8's 8 measurements), got {args.refine}")
    if args.temperature <= 0:
        ap.error(f"--temperature must be > 0, got {args.temperature}")
    if args.torch_times:
        _torch_times_main(args.torch_times, args.threads or 1)
        return 0

    from envs import (RECHECK, MlirScheduleEnv, SearchResult, greedy_search, random_search, ranked_search,
                      remeasured_best)
    from envs.search import timed_in_rounds
    from envs.mlir import MeasureConfig, Measurer, Schedule
    from envs.mlir.cache import default_cache_dir
    from envs.mlir.compile import make_inputs
    from envs.mlir.config import available_cpus
    from envs.mlir.peak import fma_peak
    from envs.suites import write_suite
    from envs.suites.torch_twins import run_twin, torch_twin
    from rllib_models.callbacks import geomean

    threads = args.threads or available_cpus()
    rows = bench_rows(args.only, args.split)
    settings = {k: getattr(args, k) for k in ("budget", "checkpoint", "cost_model", "pool", "policy_pool", "seed",
                                              "rounds", "tile_candidates", "no_search", "no_greedy", "refine",
                                              "temperature")}
    settings["threads"] = threads
    kept = _resumable(args.out, settings) if args.resume else {}
    if not args.resume and os.path.exists(args.out):  # a new run: the last result is not lost to its first row
        print(f"the previous {args.out} is now {_keep_previous(args.out)}", flush=True)
    peak = kept["fma_peak"] if kept else fma_peak(threads)  # one peak for every row's fraction
    print(f"FMA peak: {peak['gflops']:.0f} GFLOP/s on {threads} thread(s) (vector<{peak['vector_width']}xf32>)"
          + (" (from " + args.out + ")" if kept else ""), flush=True)
    done = {r["name"]: r for r in kept.get("rows", [])}
    kept_order = list(done)  # the kept curves are in this order
    todo = [r for r in rows if r["name"] not in done]
    if done:
        print(f"resuming {args.out}: {len(done)} benchmark(s) kept, {len(todo)} to measure", flush=True)
    searches = () if args.no_search else ("random",) if args.no_greedy else ("random", "greedy")
    methods = ["untransformed"] + [f"{m}_{k}" for m in searches for k in (min(8, args.budget), args.budget)]
    if args.checkpoint:
        methods = ["untransformed", "policy_1", "policy_8"] + methods[1:]
    model = None
    if args.cost_model:
        from envs.cost_model import CostModel
        model = CostModel.load(args.cost_model)
        seen = model.learned_from(r["name"] for r in rows)
        if seen:
            raise SystemExit(f"{args.cost_model} learned from {', '.join(seen)}: a cost model is judged on programs "
                             f"it has not seen (train it with --hold-out)")
        if model.meta.get("threads") != threads:
            raise SystemExit(f"{args.cost_model} learned times of {model.meta.get('threads')} thread(s); this run "
                             f"times on {threads} (--threads)")
        methods += ["model_1", "model_8"] + (["policy_model_1", "policy_model_8"] if args.checkpoint else [])
        methods += ["policy_climb_8"] if args.checkpoint and args.refine else []
    methods = list(dict.fromkeys(methods))  # --budget 8: one column each
    module, trained_on = None, []
    if args.checkpoint:
        from evaluate import load_module, policy_schedules, policy_trials, trained_benchmarks
        module = load_module(args.checkpoint)
        # The imported blocks are training programs too: say which rows the policy has seen.
        trained, path = trained_benchmarks(args.checkpoint)
        trained_on = [r["name"] for r in rows if r["name"] in set(trained)]
        if trained_on:
            print(f"note: the policy trained on {', '.join(trained_on)} ({path}): its figures there "
                  f"are not on unseen programs", flush=True)
    tmp = tempfile.TemporaryDirectory()
    suite = os.path.join(tmp.name, "bench.parquet")
    write_suite(rows, suite)
    env = MlirScheduleEnv({"suite": suite, "actions": {"tile_candidates": args.tile_candidates},
                           "measure": {"threads": threads, "repetitions": 3,
                                       "cache_dir": args.cache_dir or default_cache_dir()}})
    fresh = Measurer(MeasureConfig(threads=threads, repetitions=5))  # winners again, from scratch
    out, curves = [], {}
    t_start = time.time()

    def result_so_far(complete: bool) -> Dict:
        return {"threads": threads, "fma_peak": peak, "budget": args.budget, "recheck": RECHECK,
                "rounds": args.rounds, "methods": methods, "rows": out,
                "tile_candidates": args.tile_candidates, "policy_trained_on": trained_on,
                "summary": _summary(out, methods, geomean), "curves": curves, "settings": settings,
                "complete": complete, "date": time.strftime("%Y-%m-%d %H:%M"),
                "command": " ".join(["python", "bench/vs_pytorch.py"] + sys.argv[1:])}
    try:
        # PyTorch first: checked against our untransformed result on our inputs, then timed in a
        # process of its own (`torch_times_apart`), before the searches and again at the end.
        for row in todo:
            program = env.load(row["name"])
            twin = torch_twin(row, make_inputs(program.inputs, fresh.cfg.seed))
            ref = fresh._reference(program)
            err = max(float(np.max(np.abs(a - b))) for a, b in zip(run_twin(twin), ref))
            scale = max(float(np.max(np.abs(b))) for b in ref)
            if err > 1e-3 * scale + 1e-5:
                raise SystemExit(f"{row['name']}: PyTorch's result differs from ours (max abs error {err:.3g}): "
                                 f"the twin is not the same computation")
        torch_times = torch_times_apart(todo, threads) if todo else {}
        for i, row in enumerate(rows):
            name = row["name"]
            if name in done:  # measured by the run being resumed: its entry and curves as they were
                out.append(done[name])
                for m, c in kept["curves"].items():
                    curves.setdefault(m, []).append(c[kept_order.index(name)])
                continue
            program = env.load(name)
            torch_s = torch_times[name]
            trials = {}
            if "random" in searches:
                trials["random"] = random_search(env, name, args.budget, args.seed)
            if "greedy" in searches:
                trials["greedy"] = greedy_search(env, name, args.budget, seed=args.seed)
            if args.checkpoint:
                trials["policy"] = SearchResult.of(name, policy_trials(env, module, name, 8, args.seed,
                                                                       args.temperature))
            if model is not None:
                trials["model"] = ranked_search(env, name, 8, model, pool=args.pool, seed=args.seed)
                if args.checkpoint:
                    proposed = policy_schedules(env, module, name, args.policy_pool, args.seed, args.temperature)
                    trials["policy_model"] = ranked_search(env, name, 8, model, candidates=lambda p: proposed)
                    if args.refine:
                        trials["policy_climb"] = ranked_search(env, name, 8, model, candidates=lambda p: proposed,
                                                               refine=args.refine)
            entry = {"name": name, "family": row["family"], "flops": row["flops"], "torch_s": torch_s,
                     "torch_gflops": row["flops"] / torch_s / 1e9, "methods": {}}
            picks = {"untransformed": ("", fresh.baseline(program))}
            for m in methods[1:]:  # "random_256": the best few of random search's first 256 (model_1: its top pick)
                method, _, k = m.rpartition("_")
                picks[m] = remeasured_best(fresh, program, trials[method].top_of(int(k)), picks["untransformed"][1])
            # Each pick's time: the median of --rounds measurements, every pick in turn in each round (and
            # not the re-measure it was picked on, which favours it); a failure in any round is its result.
            timed = timed_in_rounds(fresh, program, picks, args.rounds)
            for m in methods:
                t = timed[m].time_s if timed[m].ok else None
                entry["methods"][m] = {
                    "schedule": picks[m][0] or str(Schedule.empty(program)), "status": timed[m].status,
                    "time_s": t, "gflops": row["flops"] / t / 1e9 if t else None,
                    "peak_fraction": row["flops"] / t / 1e9 / peak["gflops"] if t else None,
                    "vs_torch": torch_s / t if t else None}
            # Best-so-far ratio to PyTorch against measurements (search-time figures, not re-measured).
            search_base = env.measurer.baseline(program).time_s  # the searches' speedups are over this time
            for m, r in trials.items():
                curves.setdefault(m, []).append([s * torch_s / search_base for s in r.best_so_far])
            out.append(entry)
            r = entry["methods"]
            entry["search_base_s"] = search_base
            print(f"[{i + 1}/{len(rows)}] {name:<42} torch {entry['torch_gflops']:7.1f} GFLOP/s  " +
                  "  ".join(f"{m} x{r[m]['vs_torch']:.2f}" if r[m]["vs_torch"] else f"{m} {r[m]['status']}"
                            for m in methods) + f"  ({time.time() - t_start:.0f} s)", flush=True)
            _write(result_so_far(False), args.out)  # a run stopped later keeps this row (--resume)
        env.close()
        fresh.close()  # our workers gone: PyTorch once more, alone
        again_all = torch_times_apart(rows, threads)
        for j, entry in enumerate(out):
            again = again_all[entry["name"]]
            if again < entry["torch_s"]:
                scale = entry["torch_s"] / again  # every ratio to PyTorch shrinks by it
                entry.update(torch_s=again, torch_gflops=entry["flops"] / again / 1e9)
                for m in entry["methods"].values():
                    if m["vs_torch"]:
                        m["vs_torch"] /= scale
                for c in curves.values():
                    c[j] = [v / scale for v in c[j]]
    finally:
        env.close()
        fresh.close()
        tmp.cleanup()

    result = result_so_far(True)
    _write(result, args.out)
    _table(result)
    _plots(result, os.path.splitext(args.out)[0])
    print(f"wrote {args.out} and its two PNG plots")
    return 0


def _write(result: Dict, path: str) -> None:
    """Replace `path` whole (a run killed while writing leaves the previous version, never half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def _keep_previous(path: str) -> str:
    """Move the result in `path` aside (to <stem>.previous.json, replacing an older one) and say where."""
    prev = os.path.splitext(path)[0] + ".previous.json"
    os.replace(path, prev)
    return prev


def _resumable(path: str, settings: Dict) -> Dict:
    """The result in `path` if it was measured with these settings (else a clear error, the file untouched)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--resume: {path} is not a result of this bench ({e}); move it away or drop --resume")
    if "settings" not in old:
        raise SystemExit(f"--resume: {path} was written by an older version of this bench (no settings): "
                         f"move it away or drop --resume")
    differ = [f"{k}: {old['settings'].get(k)!r} there, {v!r} now" for k, v in settings.items()
              if old["settings"].get(k) != v]
    if differ:
        raise SystemExit(f"--resume: {path} was measured with other settings ({'; '.join(differ)}): "
                         f"rerun with those, or another --out")
    return old


def _summary(rows: List[Dict], methods: List[str], geomean) -> Dict:
    """Geometric means of the ratio to PyTorch (and the mean peak fraction) per family group and method."""
    from envs.suites import measuring_stick_rows
    groups = {"overall": rows}
    # The training split's imported blocks are on the stick too: issue 9's targets are on the eval split alone.
    eval_names = {r["name"] for r in measuring_stick_rows() if r["split"] == "eval"}
    in_eval = [r for r in rows if r["name"] in eval_names]
    if 0 < len(in_eval) < len(rows):
        groups["eval split"] = in_eval
    groups["compute-bound"] = [r for r in rows if r["family"] in COMPUTE_BOUND]
    for r in rows:
        groups.setdefault(r["family"], []).append(r)
    out = {}
    for g, rs in groups.items():
        out[g] = {"benchmarks": len(rs)}
        for m in methods:
            out[g][m] = {"vs_torch": geomean([r["methods"][m]["vs_torch"] for r in rs]),
                         "peak_fraction": geomean([r["methods"][m]["peak_fraction"] for r in rs])}
    return out


def _table(result: Dict) -> None:
    methods = result["methods"]
    w = max(len(r["name"]) for r in result["rows"]) + 1
    print(f"\nratio to PyTorch (> 1: faster), {result['threads']} thread(s); FMA peak "
          f"{result['fma_peak']['gflops']:.0f} GFLOP/s")
    if not result.get("complete", True):  # a stopped run's rows, PyTorch not yet re-timed at the end
        print(f"partial: {len(result['rows'])} benchmark(s), the run stopped before the end (--resume completes it)")
    print(f"{'benchmark':<{w}} {'torch GF/s':>10} " + " ".join(f"{m:>13}" for m in methods))
    for r in result["rows"]:
        cells = [f"x{r['methods'][m]['vs_torch']:.2f} {100 * r['methods'][m]['peak_fraction']:3.0f}%"
                 if r["methods"][m]["vs_torch"] else r["methods"][m]["status"] for m in methods]
        print(f"{r['name']:<{w}} {r['torch_gflops']:10.1f} " + " ".join(f"{c:>13}" for c in cells))
    print("geometric means (ratio to PyTorch, fraction of the FMA peak):")
    for g, s in result["summary"].items():
        print(f"  {g + ' (' + str(s['benchmarks']) + ')':<{w - 2}} {'':>10} " + " ".join(
            f"{'x%.2f %3.0f%%' % (s[m]['vs_torch'], 100 * s[m]['peak_fraction']):>13}" for m in methods))


def _plots(result: Dict, stem: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, methods = result["rows"], result["methods"]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(rows)), 5))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        ys = [r["methods"][m]["vs_torch"] or np.nan for r in rows]
        ax.bar(np.arange(len(rows)) + j * width, ys, width, label=m)
    ax.axhline(1.0, color="black", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
    ax.set_xticklabels([r["name"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ratio to PyTorch (> 1: faster)")
    ax.set_title(f"our code / PyTorch, {result['threads']} thread(s), winners re-measured")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(stem + "_ratio.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, per_bench in result["curves"].items():
        # A search that ended early (greedy: every op scheduled) keeps its best for the rest.
        n = max(len(c) for c in per_bench)
        if not n or not all(per_bench):
            continue
        arr = np.array([c + [c[-1]] * (n - len(c)) for c in per_bench], float)
        ax.plot(np.arange(1, n + 1), np.exp(np.log(np.maximum(arr, 1e-9)).mean(0)), label=m)
    ax.axhline(1.0, color="black", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("measurements spent")
    ax.set_ylabel("best so far: ratio to PyTorch (geomean)")
    ax.set_title("search budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(stem + "_budget.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
