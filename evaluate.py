"""Evaluate a trained policy: its schedules, re-measured, beside search baselines.

    python evaluate.py --checkpoint DIR                              # the eval split
    python evaluate.py --checkpoint DIR --benchmarks SUITE.parquet   # another suite
    python evaluate.py --checkpoint DIR --mlir FILE.mlir -o OUT.mlir # one program; writes it transformed
    python evaluate.py --checkpoint DIR --mlir mm.mlir --torch mymodel:model  # and its ratio to PyTorch
    python evaluate.py --checkpoint DIR --cost-model cost_model.pt   # the model picks which schedules to measure

For each benchmark the policy schedules greedily (plus episodes sampled at `--temperature`,
to `--samples` distinct schedules; with `--cost-model`, the policy proposes `--pool` schedules
and a cost model trained on the time cache, `envs.cost_model`, picks the
`--samples` to measure), and random and greedy search get the same number of
measurements. Each method's best 3 are measured again from scratch (no cache)
and checked, and the fastest is kept (`envs.search.remeasured_best`: a pick on
one measurement each favours the luckiest); then every method's pick and the
untransformed program are timed `--rounds` times (3), all in turn each round,
and the medians give the speedups (`envs.search.timed_in_rounds`: a slow
moment of the shared machine hits them all alike). Writes name, schedule,
baseline_s, scheduled_s, speedup, correct (and the baselines' speedups) to a
CSV or Parquet file and prints a table with geometric means. Only the saved
RLModule is loaded: no Algorithm, no Ray cluster.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from typing import Dict, List, Optional

from rllib_models.callbacks import geomean

# The policy's sampled episodes (its best of k after the greedy one) divide its logits by this.
# At 1 a trained policy repeats itself: the main job's best checkpoint sampled ONE distinct
# schedule in 33 episodes on 12 of the 16 eval programs, so its best of 8 was its best of 1.
# Chosen on the main job's validation programs, never the eval split: bench/policy_temperature.py
# (docs/ENV.md, "Baselines").
SAMPLE_TEMPERATURE = 4.0


def check_settings(samples: int, rounds: int, temperature: float, name=lambda key: f"--{key}") -> None:
    """ValueError naming the evaluation setting at fault (`name`: how the caller spells it, an
    option here, ``run.evaluate.<key>`` in a run's YAML)."""
    for key, value, ok, bound in (("samples", samples, samples >= 1, ">= 1"), ("rounds", rounds, rounds >= 0, ">= 0"),
                                  ("temperature", temperature, temperature > 0, "> 0")):
        if not ok:
            raise ValueError(f"{name(key)} must be {bound}, got {value}")


def run_env_config(checkpoint: str):
    """(env config, its path) of the run that wrote `checkpoint` (its env_config.json, a few
    folders up), or (None, "") when there is none."""
    import json
    from tune_run import ENV_CONFIG_FILE
    d = os.path.abspath(checkpoint)
    for _ in range(4):
        path = os.path.join(d, ENV_CONFIG_FILE)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f), path
        d = os.path.dirname(d)
    return None, ""


def trained_benchmarks(checkpoint: str):
    """(names, where from): the programs the run that wrote `checkpoint` trained on (empty when
    no training config is found beside it)."""
    cfg, path = run_env_config(checkpoint)
    return list((cfg or {}).get("benchmarks") or []), path


def training_threads(checkpoint: str):
    """(threads, where from): the timing threads of the run that wrote `checkpoint`, else the CPUs
    this process may use."""
    from envs.mlir.config import available_cpus
    cfg, path = run_env_config(checkpoint)
    if cfg is not None:
        return int(cfg["measure"]["threads"]), f"as in training, {path}"
    return available_cpus(), "the CPUs available; no training config found beside the checkpoint"


def load_module(checkpoint: str):
    """The RLModule saved in an RLlib checkpoint (or in the module folder itself)."""
    from ray.rllib.core.rl_module.rl_module import RLModule
    candidates = [os.path.join(checkpoint, "learner_group", "learner", "rl_module", "default_policy"), checkpoint]
    for path in candidates:
        if os.path.exists(os.path.join(path, "module_state.pt")) or os.path.exists(
                os.path.join(path, "module_state.pkl")) or os.path.exists(os.path.join(path, "class_and_ctor_args.pkl")):
            module = RLModule.from_checkpoint(path)
            module.eval()
            return module
    raise FileNotFoundError(f"{checkpoint}: no RLModule checkpoint here (looked for "
                            f"learner_group/learner/rl_module/default_policy)")


def policy_episode(env, module, benchmark: str, deterministic: bool, rng_seed: Optional[int] = None,
                   measure: bool = True, temperature: float = 1.0) -> Dict:
    """One episode of the policy; the final info (schedule, status, speedup...).
    With measure=False nothing is compiled: the info's schedule is the result. A sampled
    episode's logits are divided by `temperature` (> 1: more diverse; masked choices stay masked)."""
    import torch
    from ray.rllib.core.columns import Columns
    if rng_seed is not None:
        torch.manual_seed(rng_seed)
    obs, _ = env.reset(options={"benchmark": benchmark, "measure": measure})
    done = False
    dist_cls = module.get_inference_action_dist_cls()
    while not done:
        batch = {Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in obs.items()}}
        with torch.no_grad():
            out = module.forward_inference(batch) if deterministic else module.forward_exploration(batch)
        logits = out[Columns.ACTION_DIST_INPUTS]
        dist = dist_cls.from_logits(logits if deterministic or temperature == 1.0 else logits / temperature)
        if deterministic:
            dist = dist.to_deterministic()
        action = dist.sample()[0].cpu().numpy()
        obs, _, done, _, info = env.step(action)
    return info


def policy_schedules(env, module, benchmark: str, n: int, seed: int = 0,
                     temperature: float = SAMPLE_TEMPERATURE) -> List:
    """Up to `n` distinct schedules of the policy, none measured: its greedy episode first, then
    sampled ones (what `envs.search.ranked_search` ranks with a cost model)."""
    from envs.mlir import Schedule
    out, seen = [], set()
    for k in range(-1, 4 * n):
        info = policy_episode(env, module, benchmark, deterministic=k < 0, rng_seed=None if k < 0 else seed + k,
                              measure=False, temperature=temperature)
        if info["schedule"] not in seen:
            seen.add(info["schedule"])
            out.append(Schedule.parse(info["schedule"]))
            if len(out) == n:
                break
    return out


def agent_schedules(policy: List, random: List) -> List:
    """The policy's schedules (`policy_schedules`), then the random ones (`envs.search.sample_schedules`)
    not among them: one pool for a cost model to rank (bench/cost_model.py's agent:POOL:RANDOM).
    Not the default: on held-out training programs its winner was then the random pool's on four
    of five, no better than the model's picks of random ones alone and below its picks of the
    policy's (docs/ENV.md)."""
    seen = {str(s) for s in policy}
    return list(policy) + [s for s in random if str(s) not in seen]


def policy_trials(env, module, benchmark: str, samples: int, seed: int = 0,
                  temperature: float = SAMPLE_TEMPERATURE) -> List:
    """(schedule, speedup) of `samples` distinct schedules of the policy (`policy_schedules`: its
    greedy episode, then sampled ones at `temperature`), measured: a schedule sampled again is not
    measured again (fewer measurements when the policy seldom varies)."""
    from envs.search import measure_schedules
    return measure_schedules(env, benchmark, policy_schedules(env, module, benchmark, samples, seed,
                                                              temperature)).trials


def evaluate_checkpoint(checkpoint: str, split: str = "eval", suite: str = "", benchmarks: Optional[List[str]] = None,
                        samples: int = 4, env_overrides: Optional[Dict] = None, out: str = "",
                        mlir_file: str = "", output_mlir: str = "", seed: int = 0, torch_ref: str = "",
                        cost_model: str = "", pool: int = 64, rounds: int = 3,
                        temperature: float = SAMPLE_TEMPERATURE) -> List[Dict]:
    from envs import MlirScheduleEnv, SearchResult, greedy_search, random_search, ranked_search, remeasured_best
    from envs.search import timed_in_rounds
    from envs.mlir import Measurer, Program, Schedule, build_script, write_transformed
    from envs.suites import write_suite

    module = load_module(checkpoint)
    model = None
    if cost_model:
        from envs.cost_model import CostModel
        model = CostModel.load(cost_model)
    env_cfg = copy.deepcopy(env_overrides or {})
    env_cfg.pop("benchmarks", None)
    # One process evaluates on its own disk cache: a run's cluster cache actor is gone by now.
    (env_cfg.get("measure") or {}).pop("shared_cache", None)
    env_cfg.update(split=split, suite=suite)
    tmp = None
    if mlir_file:
        program = Program.from_file(mlir_file)  # bad input: MlirInputError naming file and line
        tmp = tempfile.TemporaryDirectory()
        name = os.path.splitext(os.path.basename(mlir_file))[0]
        env_cfg["suite"] = os.path.join(tmp.name, "one.parquet")
        write_suite([dict(name=name, split="user", family="user", source_model="user", layer=name,
                          mlir=program.text, flops=sum(o.flops for o in program.ops), bytes=0, params="{}")],
                    env_cfg["suite"])
        benchmarks = [name]
    if benchmarks:
        env_cfg["benchmarks"] = list(benchmarks)
    env = MlirScheduleEnv(env_cfg)
    # No cache of any kind: the winners are compiled, run and checked again.
    fresh = Measurer(env.cfg.measure.__class__(**{**env.cfg.measure.__dict__, "cache_dir": "", "shared_cache": ""}),
                     env.cfg.actions)
    rows = []
    print(f"evaluating {checkpoint} on {len(env.names)} benchmark(s), budget {samples} measurement(s) each"
          + (f"; the policy's {samples} are the best of {pool} of its schedules by {cost_model}" if model else ""))
    if model is not None and model.meta.get("threads") not in (None, env.cfg.measure.threads):
        print(f"warning: {cost_model} learned times of {model.meta['threads']} thread(s), this evaluation times on "
              f"{env.cfg.measure.threads}", file=sys.stderr)
    try:
        for name in env.names:
            if model is not None:  # the policy proposes, the cost model picks which to measure
                trials = ranked_search(env, name, samples, model,
                                       candidates=lambda p: policy_schedules(env, module, name, pool, seed,
                                                                             temperature)).trials
            else:
                trials = policy_trials(env, module, name, samples, seed, temperature)
            program = env.load(name)
            base = fresh.baseline(program)
            if not base.ok:  # MlirInputError naming the program, as Measurer.evaluate raises it
                fresh.evaluate(program, Schedule.empty(program))
            # Every method's best few measured again from scratch, no cache, and checked (`remeasured_best`):
            # their search-time figures are luck.
            picks = dict(zip(("policy", "random", "greedy"), [
                remeasured_best(fresh, program, r.top_of(samples), base) for r in (
                    SearchResult.of(name, trials),
                    random_search(env, name, samples, seed), greedy_search(env, name, samples, seed=seed))]))
            chosen = picks["policy"][0]
            if rounds:  # then the picks and the untransformed program timed in turn: the medians count
                timed = timed_in_rounds(fresh, program, {"untransformed": ("", base), **picks}, rounds)
                base = timed["untransformed"] if timed["untransformed"].ok else base
            else:
                timed = {k: m for k, (_, m) in picks.items()}
            m, rand, greedy = timed["policy"], _speedup(base, timed["random"]), _speedup(base, timed["greedy"])
            schedule = Schedule.parse(chosen) if chosen else Schedule.empty(program)
            rows.append(dict(name=name, schedule=str(schedule.for_program(program)), baseline_s=base.time_s,
                             scheduled_s=m.time_s, speedup=_speedup(base, m) or None, correct=m.status == "ok",
                             status=m.status, random_speedup=rand, greedy_speedup=greedy))
            if torch_ref and mlir_file:
                rows[-1].update(_vs_torch(torch_ref, program, m, fresh))
            if output_mlir and mlir_file:
                script = build_script(program, schedule, env.cfg.actions)
                if script is not None:
                    write_transformed(program, script, output_mlir)
                    print(f"wrote {output_mlir} and {output_mlir}.transform.mlir")
                else:
                    print(f"{output_mlir} not written: no schedule of the policy beat the untransformed program")
    finally:
        env.close()
        fresh.close()
        if tmp is not None:
            tmp.cleanup()
    _print_table(rows, samples)
    if out:
        _write(rows, out)
        print(f"wrote {out}")
    return rows


def _speedup(base, m) -> float:
    """Baseline over a re-measured winner's time (0.0: it failed now)."""
    return base.time_s / m.time_s if m.ok and m.time_s else 0.0


def load_torch_callable(spec: str):
    """``module:name`` -> the object `name` of module `module` (a function or an nn.Module instance
    called with the program's inputs, as torch tensors in argument order)."""
    import importlib
    if ":" not in spec:
        raise ValueError(f"--torch {spec}: expected module:name, e.g. mymodel:model")
    mod, attr = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--torch {spec}: {e}") from None
    if not callable(obj):
        raise ValueError(f"--torch {spec}: {attr} is not callable")
    return obj


def _vs_torch(spec: str, program, m, measurer) -> Dict:
    """PyTorch's time for the user's own program, on our inputs, and our ratio to it."""
    import numpy as np
    import torch
    from envs.mlir.compile import make_inputs
    from envs.suites.torch_twins import TorchTwin, plain_outputs, run_twin, time_torch
    cfg = measurer.cfg
    fn = load_torch_callable(spec)
    if isinstance(fn, torch.nn.Module):
        fn.eval()
    twin = TorchTwin(fn, tuple(torch.from_numpy(x) for x in make_inputs(program.inputs, cfg.seed)), plain_outputs)
    outs = run_twin(twin)
    shapes_ok = [tuple(o.shape) for o in outs] == [tuple(t.shape) for t in program.outputs]
    torch_s = time_torch(twin, cfg.threads)
    ratio = torch_s / m.time_s if m.ok and m.time_s else None
    print(f"PyTorch ({spec}): {torch_s * 1e3:.3f} ms on {cfg.threads} thread(s); the policy's code: "
          + (f"{m.time_s * 1e3:.3f} ms, ratio to PyTorch x{ratio:.2f} (> 1: faster)" if ratio else m.status))
    if not shapes_ok:
        print(f"warning: PyTorch returns shapes {[o.shape for o in outs]}, the program "
              f"{[t.shape for t in program.outputs]}: not the same computation?", file=sys.stderr)
    else:
        ref = measurer._reference(program)  # the untransformed program's outputs on the same inputs
        err = max(float(np.max(np.abs(a - b))) for a, b in zip(outs, ref))
        if err > cfg.rtol * max(float(np.max(np.abs(b))) for b in ref) + cfg.atol:
            print(f"warning: PyTorch's result differs from the program's (max abs error {err:.3g}): "
                  f"not the same computation?", file=sys.stderr)
    return {"torch_s": torch_s, "vs_torch": ratio}


def _print_table(rows: List[Dict], samples: int) -> None:
    w = max([len(r["name"]) for r in rows] + [9])
    print(f"\n{'benchmark':<{w}} {'baseline ms':>11} {'policy ms':>10} {'policy':>8} {'random':>8} {'greedy':>8}  ok")
    for r in rows:
        sched = f"{r['scheduled_s'] * 1e3:10.3f}" if r["scheduled_s"] else f"{'-':>10}"
        sp = f"x{r['speedup']:7.2f}" if r["speedup"] else f"{r['status']:>8}"
        print(f"{r['name']:<{w}} {r['baseline_s'] * 1e3:11.3f} {sched} {sp} x{r['random_speedup']:7.2f} "
              f"x{r['greedy_speedup']:7.2f}  {'yes' if r['correct'] else 'NO'}")
    print(f"{'geomean':<{w}} {'':>11} {'':>10} x{geomean([r['speedup'] for r in rows]):7.2f} "
          f"x{geomean([r['random_speedup'] for r in rows]):7.2f} x{geomean([r['greedy_speedup'] for r in rows]):7.2f}")
    print(f"(speedups over the untransformed program; every method spent {samples} measurement(s) per benchmark)")


def _write(rows: List[Dict], path: str) -> None:
    import pyarrow as pa
    table = pa.Table.from_pylist(rows)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv
        pacsv.write_csv(table, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a Tune/RLlib checkpoint folder (or an RLModule folder)")
    ap.add_argument("--benchmarks", default="", help="a suite .parquet (default: the shipped eval split)")
    ap.add_argument("--mlir", default="", help="one .mlir program instead of a suite")
    ap.add_argument("--only", nargs="*", help="only these benchmark names")
    ap.add_argument("--samples", type=int, default=4, help="measurements per benchmark and method (default 4)")
    ap.add_argument("--threads", type=int, help="timing threads (default: those the checkpoint's run trained with, "
                                                "else the CPUs available)")
    ap.add_argument("--cost-model", default="", metavar="FILE",
                    help="a cost model (python -m envs.cost_model train): the policy proposes --pool schedules, "
                         "the model picks which --samples to measure")
    ap.add_argument("--pool", type=int, default=64, help="with --cost-model: the policy's schedules ranked")
    ap.add_argument("--rounds", type=int, default=3,
                    help="each method's pick and the untransformed program timed this many times in turn; the "
                         "medians count (0: the picks' own re-measures)")
    ap.add_argument("--temperature", type=float, default=SAMPLE_TEMPERATURE,
                    help=f"the policy's sampled episodes divide its logits by this (default {SAMPLE_TEMPERATURE:g}, "
                         f"chosen on validation programs; 1: as trained); its greedy episode stays greedy")
    ap.add_argument("--out", default="evaluation.csv", help="results file (.csv or .parquet)")
    ap.add_argument("-o", "--output-mlir", default="", help="with --mlir: write the transformed module here")
    ap.add_argument("--torch", default="", metavar="MODULE:NAME",
                    help="with --mlir: the same computation in PyTorch (a function or nn.Module called with the "
                         "program's inputs); prints our ratio to it")
    args = ap.parse_args(argv)
    from envs.mlir import MlirInputError
    from envs.suites import SuiteError
    threads, where = args.threads, "--threads"
    if not threads:
        threads, where = training_threads(args.checkpoint)
    print(f"timing threads: {threads} ({where})")
    overrides = {"measure": {"threads": threads}}
    try:
        check_settings(args.samples, args.rounds, args.temperature)
        if args.torch and not args.mlir:
            raise ValueError("--torch goes with --mlir (the suites' own PyTorch twins: bench/vs_pytorch.py)")
        evaluate_checkpoint(args.checkpoint, suite=args.benchmarks, benchmarks=args.only, samples=args.samples,
                            env_overrides=overrides, out=args.out, mlir_file=args.mlir, output_mlir=args.output_mlir,
                            torch_ref=args.torch, cost_model=args.cost_model, pool=args.pool, rounds=args.rounds,
                            temperature=args.temperature)
    except (MlirInputError, SuiteError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
