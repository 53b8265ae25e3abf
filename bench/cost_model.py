"""How a cost model's search settings compare, on held-out training programs.

For each program (training programs only: the settings of a search may not be
chosen on the eval split) and each variant `POOL:GENERATIONS`, `ranked_search`
measures the model's best 8 of POOL random schedules, evolved GENERATIONS
times on the model first; a variant `policy:POOL:GENERATIONS` (with
`--checkpoint`) ranks POOL distinct schedules of the policy instead (its
greedy episode, then sampled ones; evaluate.py's `--cost-model` search),
sampled with its logits divided by `evaluate.SAMPLE_TEMPERATURE` (4; before
commit f120769, by 1) or by T in `policy:POOL:GENERATIONS:T`;
`agent:POOL:RANDOM` ranks the policy's POOL and RANDOM random schedules
together (`evaluate.agent_schedules`). A suffix `+rK` on any variant spends the
last K of its measurements climbing from the fastest one measured
(`ranked_search`'s `refine`: the model picks among its mutations).
Random search's best of 8 and of 256, and with `--checkpoint` the policy's
own best of 8 (greedy, then 7 distinct sampled episodes, measured), are the
yardsticks. Every winner is then measured again from scratch, all variants in
turn, `--repeats` times (the median counts), so that the machine's drift hits
them alike. Speedups are over the untransformed program, measured in the same
rounds.

    python -m envs.cost_model train --hold-out A B C --out cm_val.pt
    python bench/cost_model.py --cost-model cm_val.pt --only A B C --variants 4096:0 1024:0 1024:4
    python bench/cost_model.py --cost-model cm_val.pt --only A B C --checkpoint CKPT --variants policy:64:0 policy:256:0
    python bench/cost_model.py --cost-model cm_val.pt --only A B C --checkpoint CKPT --variants 4096:0 agent:64:4096
    python bench/cost_model.py --cost-model cm_val.pt --only A B C --checkpoint CKPT --variants policy:64:0 policy:64:0+r4

A checkpoint is judged on programs it has not trained on (a run's validation subset).

Writes bench/results/cost_model.json and cost_model.png (speedup per program
and variant) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    from evaluate import SAMPLE_TEMPERATURE  # the policy's pools sampled as evaluate.py samples them
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cost-model", required=True, nargs="+",
                    help="one model, or several (each variant runs with each; labelled by file name)")
    ap.add_argument("--only", nargs="+", required=True, help="training programs the model has not learned from")
    ap.add_argument("--variants", nargs="+", default=["4096:0", "1024:0", "1024:4"],
                    help="POOL:GENERATIONS each (random schedules), policy:POOL:GENERATIONS[:TEMPERATURE] (the "
                         "policy's, sampled at evaluate.SAMPLE_TEMPERATURE unless given), or agent:POOL:RANDOM "
                         "(both); +rK: the last K measurements climb from the fastest")
    ap.add_argument("--checkpoint", default="", help="a policy (tune_run.py checkpoint) for policy:... variants; "
                                                     "adds policy_8, its own best of 8")
    ap.add_argument("--budget", type=int, default=8, help="measurements of each ranked search")
    ap.add_argument("--random", type=int, default=256, help="random search's budget (0: none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="", help="time cache of the searches (default: a new temporary one)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cost_model.json"))
    args = ap.parse_args()

    import tempfile
    from envs import MlirScheduleEnv, random_search, ranked_search, sample_schedules
    from envs.search import interleaved
    from envs.cost_model import CostModel, learnable_rows
    from envs.mlir import MeasureConfig, Measurer
    from envs.mlir.config import available_cpus
    from envs.suites import write_suite
    from rllib_models.callbacks import geomean

    threads = args.threads or available_cpus()
    models = {os.path.splitext(os.path.basename(p))[0]: CostModel.load(p) for p in args.cost_model}
    rows = {r["name"]: r for r in learnable_rows()}
    bad = [n for n in args.only if n not in rows]
    if bad:
        ap.error(f"--only: {', '.join(bad)} are not training programs (the eval split and the imported blocks "
                 f"are for evaluation only)")
    for label, model in models.items():
        seen = model.learned_from(args.only)
        if seen:
            ap.error(f"{label} learned from {', '.join(seen)}: hold them out (--hold-out) to judge it on them")
    variants = []
    for v in args.variants:
        spec, plus, refine = v.partition("+r")
        kind = spec.split(":")[0] if spec.split(":")[0] in ("policy", "agent") else "random"
        parts = spec.split(":")[0 if kind == "random" else 1:]
        try:
            refine = int(refine) if plus else 0  # "+r" with no K is an error, not 0
            if not 0 <= refine <= args.budget:
                raise ValueError(v)
            if len(parts) not in {"random": (2,), "policy": (2, 3), "agent": (2,)}[kind]:
                raise ValueError(v)
            pool, gens = int(parts[0]), int(parts[1])  # agent: the policy's pool, then the random pool
            temp = float(parts[2]) if len(parts) == 3 else SAMPLE_TEMPERATURE
            if temp <= 0 or pool < 1 or gens < 0:
                raise ValueError(v)
        except ValueError:
            ap.error(f"--variants {v}: expected POOL:GENERATIONS, policy:POOL:GENERATIONS[:TEMPERATURE > 0] or "
                     f"agent:POLICY_POOL:RANDOM_POOL, each with an optional +rK (0 <= K <= --budget), e.g. 1024:4, "
                     f"policy:256:0:2, agent:64:4096 or policy:64:0+r4")
        if kind != "random" and not args.checkpoint:
            ap.error(f"--variants {v}: a {kind} variant needs --checkpoint")
        for label, model in models.items():
            name = f"{label} " if len(models) > 1 else ""
            t = f" T {temp:g}" + (f" refine {refine}" if refine else "")
            if kind == "agent":
                variants.append((f"{name}agent_{args.budget} pool {pool}+{gens}{t}", model, kind, pool, 0, temp, gens,
                                 refine))
            else:
                variants.append((f"{name}{'policy_model' if kind == 'policy' else 'model'}_{args.budget} pool {pool} "
                                 f"gen {gens}{t}", model, kind, pool, gens, temp, 0, refine))
    module = None
    if args.checkpoint:
        from evaluate import agent_schedules, load_module, policy_schedules, policy_trials, trained_benchmarks
        trained, path = trained_benchmarks(args.checkpoint)
        seen = sorted(set(args.only) & set(trained))
        if seen:
            ap.error(f"the policy trained on {', '.join(seen)} ({path}): judge it on programs it has not trained on")
        module = load_module(args.checkpoint)
    tmp = tempfile.TemporaryDirectory()
    suite = os.path.join(tmp.name, "programs.parquet")
    write_suite([rows[n] for n in args.only], suite)
    env = MlirScheduleEnv({"suite": suite, "measure": {"threads": threads, "repetitions": 3,
                                                        "cache_dir": args.cache_dir or os.path.join(tmp.name, "c")}})
    fresh = Measurer(MeasureConfig(threads=threads, repetitions=5))
    methods = ([v[0] for v in variants] + ([f"policy_{args.budget}"] if module else [])
               + ([f"random_{args.budget}", f"random_{args.random}"] if args.random else []))
    out, t0 = [], time.time()
    try:
        for name in args.only:
            program = env.load(name)
            winners, search_s = {}, {}
            for label, model, kind, pool, gens, temperature, random_pool, refine in variants:
                t = time.time()
                candidates = None if kind == "random" else (
                    lambda p, n=pool, tp=temperature, rp=random_pool: agent_schedules(
                        policy_schedules(env, module, name, n, args.seed, tp),
                        sample_schedules(env, name, rp, args.seed) if rp else []))
                r = ranked_search(env, name, args.budget, model, pool=pool, seed=args.seed, generations=gens,
                                  candidates=candidates, refine=refine)
                winners[label], search_s[label] = r.schedule, time.time() - t
            if module:
                t = time.time()
                trials = policy_trials(env, module, name, args.budget, args.seed)
                winners[f"policy_{args.budget}"] = max(trials, key=lambda x: x[1])[0] if trials else ""
                search_s[f"policy_{args.budget}"] = time.time() - t
            if args.random:
                r = random_search(env, name, args.random, args.seed)
                winners[f"random_{args.budget}"] = r.best_of(args.budget)[0]
                winners[f"random_{args.random}"] = r.best_of(args.random)[0]
            # Every winner in turn, so that drift hits all alike.
            runs = interleaved(fresh, program, {"untransformed": "", **{m: winners[m] for m in methods if winners[m]}},
                               args.repeats)
            base = float(np.median([x.time_s for x in runs["untransformed"]]))
            entry = {"name": name, "base_s": base, "methods": {}}
            for m in methods:
                t = float(np.median([x.time_s if x.ok else float("inf") for x in runs[m]])) if m in runs else base
                entry["methods"][m] = {"schedule": winners[m], "time_s": t, "speedup": base / t,
                                       "search_s": search_s.get(m)}
            out.append(entry)
            print(f"{name:<40} " + "  ".join(f"{m} x{entry['methods'][m]['speedup']:.2f}" for m in methods)
                  + f"  ({time.time() - t0:.0f} s)", flush=True)
    finally:
        env.close()
        fresh.close()
        tmp.cleanup()
    summary = {m: geomean([e["methods"][m]["speedup"] for e in out]) for m in methods}
    result = {"cost_models": [os.path.abspath(p) for p in args.cost_model], "threads": threads,
              "checkpoint": os.path.abspath(args.checkpoint) if args.checkpoint else "", "rows": out,
              "summary": summary, "methods": methods, "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(["python", "bench/cost_model.py"] + sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    w = max(len(m) for m in methods)
    print("\ngeomean speedup over the untransformed program (winners re-measured, median of "
          f"{args.repeats}):")
    for m in methods:
        print(f"  {m:<{w}} x{summary[m]:.2f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(out)), 4))
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        ax.bar(np.arange(len(out)) + k * width, [e["methods"][m]["speedup"] for e in out], width, label=m)
    ax.set_xticks(np.arange(len(out)) + 0.4 - width / 2, [e["name"] for e in out], rotation=20, ha="right",
                  fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("speedup over untransformed (re-measured)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = os.path.splitext(args.out)[0] + ".png"
    fig.savefig(png, dpi=120)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
