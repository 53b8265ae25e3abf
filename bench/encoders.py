"""Does DistilBERT learn better than the LSTM?  The same training for each encoder.

lstm, the small distilbert and distilbert (their YAMLs' model and ppo sections)
train on the same programs with the same timing target, batch and number of
PPO iterations (so the same env steps): the env, resources and run sections are
lstm.yaml's; each encoder keeps its own learning rate and minibatch size.  Each
(encoder, seed) is one `tune_run.py` run (sequential: they time code on the
same cores), sharing one time cache so that the same schedule costs the same
for all.  Then: learning curves (the iterations' geometric-mean speedup and the
validation's, against env steps and against wall time; mean and min-max over
seeds) and, for each encoder's best checkpoint (by validation, over its seeds),
the measuring stick on the held-out benchmarks (`vs_pytorch.py --no-search`:
the policy's best of 1 and of 8 against PyTorch).

    python bench/encoders.py [--iters 40] [--seeds 0 1 2] [--models lstm distilbert-small distilbert]
    python bench/encoders.py --replot         # the plots and table again from --out's JSON

Writes bench/results/encoders.json, encoders_curves.png, and a log per run.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"lstm": "lstm.yaml", "distilbert-small": "distilbert_small.yaml", "distilbert": "distilbert.yaml"}
KEEP_PPO = ("lr", "minibatch_size", "num_epochs", "entropy_coeff", "grad_clip")  # each encoder's own


def run_config(model: str, seed: int, iters: int, results: str) -> dict:
    """lstm.yaml's env, resources and run sections; the encoder's model and its own ppo settings."""
    with open(os.path.join(ROOT, "tune_configs", "lstm.yaml")) as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(ROOT, "tune_configs", MODELS[model])) as f:
        own = yaml.safe_load(f)
    cfg["model"] = own["model"]
    cfg["ppo"].update({k: v for k, v in own["ppo"].items() if k in KEEP_PPO})
    cfg["run"].update(name=f"{model}_seed{seed}", seed=seed, stop_iters=iters, results_dir=results)
    cfg["run"].pop("stop_time_s", None)
    return cfg


def progress(results: str, name: str) -> list:
    """The run's iterations from Tune's result.json of its (last) trial folder (progress.csv
    keeps only the columns of the first iteration: the validation comes later)."""
    files = sorted(glob.glob(os.path.join(results, name, "*", "result.json")), key=os.path.getmtime)
    out = []
    for line in (open(files[-1]).read().splitlines() if files else []):
        r = json.loads(line)
        m = r.get("mlir") or {}
        out.append({"iter": int(r.get("training_iteration", 0)), "time_s": float(r.get("time_total_s", math.nan)),
                    "env_steps": float((r.get("env_runners") or {}).get("num_env_steps_sampled_lifetime", math.nan)),
                    "speedup": float(m.get("speedup_geomean", math.nan)),
                    "val": float(m.get("val_speedup_geomean", math.nan))})
    return out


def best_checkpoint(log: str) -> str:
    for line in reversed(open(log).read().splitlines()):
        for tag in ("best checkpoint (by val_speedup_geomean): ", "latest checkpoint"):
            if line.startswith(tag):
                return line.split(": ", 1)[1].strip()
    return ""


def final_val(curve: list) -> float:
    vals = [p["val"] for p in curve if not math.isnan(p["val"])]
    return max(vals) if vals else math.nan


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for (row, key), (col, x) in [((r, k), (c, xx)) for r, k in enumerate(("speedup", "val"))
                                 for c, xx in enumerate(("env_steps", "time_s"))]:
        ax = axes[row][col]
        for model, runs in result["runs"].items():
            curves = [c for c in (r["curve"] for r in runs) if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = np.array([[p[x] for p in c[:n]] for c in curves], float).mean(0)
            ys = np.array([[p[key] for p in c[:n]] for c in curves], float)
            ok = ~np.isnan(ys).all(0)
            if not ok.any():
                continue
            with np.errstate(all="ignore"):
                mean = np.exp(np.nanmean(np.log(ys), 0))
            line, = ax.plot(xs[ok], mean[ok], label=f"{model} ({len(curves)} seeds)")
            ax.fill_between(xs[ok], np.nanmin(ys, 0)[ok], np.nanmax(ys, 0)[ok], alpha=0.2, color=line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel({"env_steps": "env steps", "time_s": "wall time (s)"}[x])
        ax.set_ylabel({"speedup": "iteration's speedup (geomean)",
                       "val": "validation speedup (greedy policy, geomean)"}[key])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("encoders at equal training: mean over seeds (geometric), band = min..max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> None:
    print(f"\n{'encoder':<17} {'seeds':>5} {'s/iter':>7} {'last speedup':>13} {'best val':>9} "
          f"{'vs PyTorch p1':>13} {'p8':>6} {'compute-bound p8':>17}")
    for model, runs in result["runs"].items():
        curves = [r["curve"] for r in runs if r["curve"]]
        if not curves:
            continue
        per_iter = sum(c[-1]["time_s"] / c[-1]["iter"] for c in curves) / len(curves)
        last = math.exp(sum(math.log(c[-1]["speedup"]) for c in curves) / len(curves))
        val = [final_val(c) for c in curves]
        v = math.exp(sum(math.log(x) for x in val if not math.isnan(x)) / max(1, sum(not math.isnan(x) for x in val)))
        stick = result.get("held_out", {}).get(model, {})
        o, cb = stick.get("overall", {}), stick.get("compute-bound", {})
        cell = lambda d, m: f"x{d[m]['vs_torch']:.2f}" if d.get(m) else "-"  # noqa: E731
        print(f"{model:<17} {len(curves):>5} {per_iter:7.1f} {last:13.2f} {v:9.2f} {cell(o, 'policy_1'):>13} "
              f"{cell(o, 'policy_8'):>6} {cell(cb, 'policy_8'):>17}")
    print("(speedups over the untransformed programs; 'best val': the best validation over the run, geomean over "
          "seeds; vs PyTorch: the best checkpoint on the held-out benchmarks, bench/vs_pytorch.py --no-search)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=40, help="PPO iterations of each run (256 env steps each)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--no-stick", action="store_true", help="skip the held-out measuring stick")
    ap.add_argument("--cache-dir", default="", help="the runs' shared time cache (default: the project's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "encoders.json"))
    ap.add_argument("--replot", action="store_true")
    args = ap.parse_args()
    stem = os.path.splitext(args.out)[0]
    if args.replot:
        result = json.load(open(args.out))
        table(result)
        plot(result, stem + "_curves.png")
        return 0
    work = stem + "_runs"
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ)
    if args.cache_dir:
        env["MLIR_RL_CACHE"] = args.cache_dir
    result = {"iters": args.iters, "seeds": args.seeds, "runs": {}, "held_out": {},
              "command": " ".join(["python", "bench/encoders.py"] + sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M")}
    t0 = time.time()
    for model in args.models:
        for seed in args.seeds:
            cfg = run_config(model, seed, args.iters, os.path.join(work, "results"))
            path = os.path.join(work, f"{model}_seed{seed}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(cfg, f)
            log = os.path.join(work, f"{model}_seed{seed}.log")
            print(f"[{time.time() - t0:6.0f} s] {model} seed {seed}: {args.iters} iterations ({log})", flush=True)
            with open(log, "w") as f:
                rc = subprocess.run([sys.executable, "tune_run.py", "--config", path, "--no-eval"], cwd=ROOT, env=env,
                                    stdout=f, stderr=subprocess.STDOUT).returncode
            curve = progress(cfg["run"]["results_dir"], cfg["run"]["name"])
            run = {"seed": seed, "returncode": rc, "log": log, "checkpoint": best_checkpoint(log), "curve": curve}
            result["runs"].setdefault(model, []).append(run)
            if curve:
                print(f"    last iteration x{curve[-1]['speedup']:.2f}, best validation x{final_val(curve):.2f}, "
                      f"{curve[-1]['time_s']:.0f} s", flush=True)
            else:
                print(f"    no progress recorded (exit {rc}); see {log}", flush=True)
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    if not args.no_stick:
        for model, runs in result["runs"].items():
            done = [r for r in runs if r["checkpoint"] and r["curve"]]
            if not done:
                continue
            best = max(done, key=lambda r: final_val(r["curve"]) if not math.isnan(final_val(r["curve"])) else -1)
            out = f"{stem}_{model}_vs_pytorch.json"
            print(f"[{time.time() - t0:6.0f} s] {model}: measuring stick, seed {best['seed']}'s best checkpoint",
                  flush=True)
            subprocess.run([sys.executable, "bench/vs_pytorch.py", "--checkpoint", best["checkpoint"], "--no-search",
                            "--budget", "8", "--out", out], cwd=ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL)
            result["held_out"][model] = json.load(open(out))["summary"]
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    table(result)
    plot(result, stem + "_curves.png")
    print(f"wrote {args.out}, {stem}_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
