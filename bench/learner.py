"""Learner cost of the encoders: the real `MlirPolicyModule` of each run configuration.

For `lstm` (tune_configs/lstm.yaml), `distilbert` (distilbert.yaml) and the small
distilbert (distilbert_small.yaml): the module RLlib's learner updates, built from
the YAML's model section and the env's action layout, on a batch of real
observations (episodes of the env with uniformly sampled valid actions, their
masks included).  One update = forward_train, the masked action distribution's
log-probabilities and entropy, the value head, a PPO clipped loss, backward and
an Adam step.  Samples per second (median of timed rounds after a warm-up) and
peak memory (the process's peak RSS above what it held before building the
module; on CUDA, torch's peak allocation), on the CPU and, where CUDA is present,
on the GPU.  Each (model, device) runs in its own process, so peaks do not mix.

    python bench/learner.py [--batch 64 [1024 ...]] [--devices cpu cuda] [--rounds 5] [--threads N]
    python bench/learner.py --write-inputs inputs.gz --batch 4096     # where the env runs
    python bench/learner.py --inputs inputs.gz --devices cuda --batch 32 64 256 1024 4096

Writes bench/results/learner.json and prints a table, a row per (model, device,
batch).  A GPU machine without the env or the MLIR wheel times the same module
on the same observations from the file that `--write-inputs` writes (observations,
actions, spaces and each model's module config, pickled; it needs torch,
transformers and Ray's RLlib, not the env); docs/DISTILBERT_MODEL.md says how the
H200 rows were made that way.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {"lstm": "lstm.yaml", "distilbert": "distilbert.yaml", "distilbert-small": "distilbert_small.yaml"}
# Small training programs whose episodes give the observations (fast to measure).
OBS_BENCHMARKS = ["resnet_18_fc_batch_8", "resnet_18_layer1_residual_add", "resnet_18_layer2_relu"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def observations(batch: int, seed: int = 0):
    """`batch` real observations and valid actions: episodes of the env with uniform valid actions."""
    import numpy as np
    from envs import MlirScheduleEnv
    from tune_run import env_config, load_config
    env_cfg = env_config(load_config(os.path.join(ROOT, "tune_configs", "smoke.yaml")))
    env_cfg["benchmarks"] = OBS_BENCHMARKS
    env = MlirScheduleEnv(env_cfg)
    rng = np.random.default_rng(seed)
    obs_list, actions = [], []
    try:
        while len(obs_list) < batch:
            obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
            done = False
            while not done and len(obs_list) < batch:
                a = env.sample_valid_action(obs, rng)
                obs_list.append(obs)
                actions.append(a)
                obs, _, done, _, _ = env.step(a)
        spec = env.action_layout_spec()
        spaces = (env.observation_space, env.action_space)
    finally:
        env.close()
    stacked = {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}
    return stacked, np.stack(actions), spec, spaces


def build_inputs(batch: int, names) -> dict:
    """Everything a timing child needs, as plain data: `batch` real observations and
    valid actions, the spaces, and per model its module config (the env's action layout
    included) and learning rate. Pickled by --write-inputs so that a machine without the
    env or the MLIR wheel (the GPU machine) times the same module on the same batch."""
    from tune_run import env_config, load_config, module_config
    import gymnasium as gym
    obs, actions, spec, (obs_space, act_space) = observations(batch)
    # The env's MaskedMultiDiscrete only adds masked sampling for the env; as a plain
    # MultiDiscrete (what the module checks) the file unpickles without the env's package.
    spaces = (obs_space, gym.spaces.MultiDiscrete(act_space.nvec))
    models = {}
    for name in names:
        cfg = load_config(os.path.join(ROOT, "tune_configs", MODELS[name]))
        model_config = module_config(cfg, {**env_config(cfg), "benchmarks": OBS_BENCHMARKS})
        model_config["action_layout"] = spec
        lr = cfg["ppo"].get("lr", 1e-4)
        models[name] = {"model_config": model_config, "lr": float(lr) if not isinstance(lr, dict) else 1e-4}
    return {"obs": obs, "actions": actions, "spaces": spaces, "models": models}


def load_inputs(path: str, name: str, batch: int) -> dict:
    with gzip.open(path, "rb") as f:
        inputs = pickle.load(f)
    have = len(inputs["actions"])
    if name not in inputs["models"]:
        raise SystemExit(f"{path}: no module config for {name} (written for {', '.join(inputs['models'])})")
    if batch > have:
        raise SystemExit(f"{path}: holds {have} observations, --batch {batch} asks for more; "
                         f"write it again with --batch {batch}")
    return inputs


def measure_module(name: str, device: str, batches, rounds: int, steps: int, inputs_path: str = "") -> list:
    """One (model, device): the real MlirPolicyModule, a PPO-style update timed at each batch size
    (ascending, so the CPU's peak RSS so far is the peak of the batch just timed)."""
    import torch
    from ray.rllib.core.columns import Columns
    from rllib_models.module import MlirPolicyModule
    batches = sorted(batches)
    inputs = load_inputs(inputs_path, name, batches[-1]) if inputs_path else build_inputs(batches[-1], [name])
    obs_space, act_space = inputs["spaces"]
    model = inputs["models"][name]
    base = _rss_mb()
    torch.manual_seed(0)
    module = MlirPolicyModule(observation_space=obs_space, action_space=act_space,
                              model_config=model["model_config"])
    module.to(device)
    opt = torch.optim.Adam(module.parameters(), lr=model["lr"])
    dist_cls = module.get_train_action_dist_cls()
    rows = []
    for batch in batches:
        obs = {k: torch.as_tensor(v[:batch], device=device) for k, v in inputs["obs"].items()}
        actions = torch.as_tensor(inputs["actions"][:batch], device=device)
        adv = torch.randn(batch, device=device)

        def update():
            out = module.forward_train({Columns.OBS: obs})
            dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
            logp = dist.logp(actions)
            ratio = torch.exp(logp - logp.detach())
            pg = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv).mean()
            values = module.compute_values({Columns.OBS: obs}, embeddings=out.get(Columns.EMBEDDINGS))
            loss = pg + 0.5 * values.pow(2).mean() - 0.01 * dist.entropy().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows.append(_time(update, name, device, batch, rounds, steps, base, module.parameter_counts()))
    return rows


def _time(update, name, device, batch, rounds, steps, base_rss, counts) -> dict:
    import torch
    for _ in range(2):
        update()
    rates = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            update()
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - t))
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else _rss_mb() - base_rss
    return {"model": name, "device": device, "batch": batch, "samples_per_s": statistics.median(rates),
            "peak_memory_mb": peak, "encoder_params": counts["encoder"], "total_params": counts["total"],
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[64], help="batch size(s) of one update")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="updates per timed round")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--models", nargs="*", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--devices", nargs="*", choices=["cpu", "cuda"], default=None,
                    help="default: the CPU, and CUDA where torch sees a device")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "learner.json"))
    ap.add_argument("--write-inputs", default="", metavar="FILE",
                    help="write the observations and module configs (largest --batch) to FILE and exit")
    ap.add_argument("--inputs", default="", metavar="FILE",
                    help="time with FILE's inputs (from --write-inputs): no env or MLIR needed, only torch, "
                         "transformers and Ray's RLlib (the GPU machine)")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if min(args.batch) < 1:
        raise SystemExit(f"--batch {min(args.batch)}: a batch needs at least one observation")
    if args.write_inputs:
        inputs = build_inputs(max(args.batch), args.models)
        with gzip.open(args.write_inputs, "wb") as f:  # mostly zeros: 24 MB -> 0.3 MB for 2048
            pickle.dump(inputs, f)
        print(f"wrote {args.write_inputs}: {len(inputs['actions'])} observations, models {', '.join(inputs['models'])}")
        return
    if args.inputs and not os.path.exists(args.inputs):
        raise SystemExit(f"--inputs {args.inputs}: no such file (write it with --write-inputs where the env runs)")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_args = ["--batch"] + [str(b) for b in args.batch]
    if args.one:  # a child: one (model, device), its rows as JSON on the last line
        name, device = args.one
        r = measure_module(name, device, args.batch, args.rounds, args.steps, args.inputs)
        print(json.dumps(r))
        return
    devices = args.devices if args.devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: torch sees no CUDA device here")
    rows = []
    for device in devices:
        for name in args.models:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", name, device, *batch_args,
                   "--rounds", str(args.rounds), "--steps", str(args.steps), "--threads", str(args.threads)]
            if args.inputs:
                cmd += ["--inputs", os.path.abspath(args.inputs)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if p.returncode:
                raise SystemExit(f"{name} on {device} failed:\n{p.stderr[-3000:]}")
            for r in json.loads(p.stdout.strip().splitlines()[-1]):
                rows.append(r)
                print(f"  {r['model']:<17} {device:<5} batch {r['batch']:>5} {r['samples_per_s']:9.1f} samples/s  "
                      f"{r['total_params'] / 1e6:6.2f}M parameters  peak {r['peak_memory_mb']:7.0f} MB", flush=True)
    for r in rows:
        ref = [q for q in rows if q["model"].startswith("lstm") and (q["device"], q["batch"]) == (r["device"], r["batch"])]
        if ref:
            r["slowdown_vs_lstm"] = ref[0]["samples_per_s"] / r["samples_per_s"]
    info = {"torch": torch.__version__, "cpu_threads": rows[0]["threads"] if rows else torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "module": "MlirPolicyModule", "rows": rows,
            "command": "python bench/learner.py " + " ".join(sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"\n{'model':<17} {'device':<6} {'batch':>6} {'samples/s':>10} {'x slower than lstm':>19} {'encoder':>10} "
          f"{'total':>10} {'peak MB':>8}")
    for r in rows:
        print(f"{r['model']:<17} {r['device']:<6} {r['batch']:>6} {r['samples_per_s']:10.1f} "
              f"{r.get('slowdown_vs_lstm', 1.0):19.2f} {r['encoder_params'] / 1e6:9.2f}M "
              f"{r['total_params'] / 1e6:9.2f}M {r['peak_memory_mb']:8.0f}")
    print(f"(one PPO update: forward, masked distribution, value, clipped loss, backward, Adam; median of "
          f"{args.rounds} rounds of {args.steps}; torch {torch.__version__}, {info['cpu_threads']} CPU threads"
          f"{', GPU ' + info['gpu'] if info['gpu'] else ', no CUDA device'}; peak: RSS above the process's "
          f"before the module on the CPU, torch's peak allocation on CUDA)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
