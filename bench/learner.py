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

    python bench/learner.py [--batch 64] [--rounds 5] [--threads N]
    python bench/learner.py --standalone   # a machine with torch but no Ray/MLIR (see below)

Writes bench/results/learner.json and prints a table.  `--standalone` (for a GPU
machine that has torch and transformers but not Ray or the MLIR wheel) times the
same encoders through a torch-only stand-in of the module (encoder, policy
backbone and logits layer, value head; the layout's sizes from `--layout`, a JSON
that `--write-layout` writes where the env exists); its rows say so.
"""
from __future__ import annotations

import argparse
import json
import os
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


def measure_module(name: str, device: str, batch: int, rounds: int, steps: int) -> dict:
    """One (model, device): the real MlirPolicyModule, a PPO-style update timed."""
    import torch
    from ray.rllib.core.columns import Columns
    from rllib_models.module import MlirPolicyModule
    from tune_run import env_config, load_config, module_config
    obs_np, act_np, spec, (obs_space, act_space) = observations(batch)
    cfg = load_config(os.path.join(ROOT, "tune_configs", MODELS[name]))
    model_config = module_config(cfg, {**env_config(cfg), "benchmarks": OBS_BENCHMARKS})
    model_config["action_layout"] = spec
    lr = float(cfg["ppo"].get("lr", 1e-4)) if not isinstance(cfg["ppo"].get("lr"), dict) else 1e-4
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    torch.manual_seed(0)
    module = MlirPolicyModule(observation_space=obs_space, action_space=act_space, model_config=model_config)
    module.to(device)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    obs = {k: torch.as_tensor(v, device=device) for k, v in obs_np.items()}
    actions = torch.as_tensor(act_np, device=device)
    adv = torch.randn(batch, device=device)
    dist_cls = module.get_train_action_dist_cls()

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

    return _time(update, name, device, batch, rounds, steps, base, module.parameter_counts())


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


def measure_standalone(name: str, device: str, batch: int, rounds: int, steps: int, layout: str) -> dict:
    """A torch-only stand-in of the module (no Ray here): encoder, backbone + logits, value head."""
    import torch
    import yaml
    from torch import nn
    from rllib_models.encoders import build_encoder
    with open(layout) as f:
        dims = json.load(f)
    with open(os.path.join(ROOT, "tune_configs", MODELS[name])) as f:
        model = yaml.safe_load(f)["model"]
    mt, enc_cfg, hidden = model["model_type"], dict(model.get("encoder") or {}), int(model.get("backbone_hidden", 256))
    base = _rss_mb()
    torch.manual_seed(0)
    enc = build_encoder(mt, dims["op_dim"], dims["history_dim"], **enc_cfg)
    venc = None if model.get("vf_share_encoder", mt == "distilbert") else \
        build_encoder(mt, dims["op_dim"], dims["history_dim"], **enc_cfg)
    pi = nn.Sequential(nn.Linear(enc.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, dims["n_logits"]))
    vf = nn.Sequential(nn.Linear(enc.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    parts = nn.ModuleList([m for m in (enc, venc, pi, vf) if m is not None]).to(device)
    opt = torch.optim.Adam(parts.parameters(), lr=1e-4)
    op = torch.randn(batch, dims["op_dim"], device=device)
    prod = torch.randn(batch, dims["op_dim"], device=device)
    hist = torch.rand(batch, dims["history_dim"], device=device)

    def update():
        e = enc(op, prod, hist)
        v = vf(e if venc is None else venc(op, prod, hist))
        loss = torch.log_softmax(pi(e), -1).mean() + v.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return _time(update, name + " (standalone)", device, batch, rounds, steps, base,
                 {"encoder": count(enc), "total": count(parts)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="updates per timed round")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--models", nargs="*", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "learner.json"))
    ap.add_argument("--standalone", action="store_true", help="torch-only stand-in (a machine without Ray/MLIR)")
    ap.add_argument("--layout", default="", help="with --standalone: the sizes JSON that --write-layout wrote")
    ap.add_argument("--write-layout", default="", help="write the env's sizes to this JSON and exit")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_layout:
        from envs import ActionLayout
        from envs.mlir import FeatureLayout
        from rllib_models.layout import logit_count
        f = FeatureLayout()
        dims = {"op_dim": f.op_size, "history_dim": f.history_size, "n_logits": logit_count(ActionLayout().spec())}
        with open(args.write_layout, "w") as fh:
            json.dump(dims, fh)
        print(f"wrote {args.write_layout}: {dims}")
        return
    if args.standalone and not args.layout:
        raise SystemExit("--standalone needs --layout (written by --write-layout on a machine with the env)")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # a child: one (model, device), its JSON on the last line
        name, device = args.one
        r = (measure_standalone(name, device, args.batch, args.rounds, args.steps, args.layout) if args.standalone
             else measure_module(name, device, args.batch, args.rounds, args.steps))
        print(json.dumps(r))
        return
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for name in args.models:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", name, device, "--batch", str(args.batch),
                   "--rounds", str(args.rounds), "--steps", str(args.steps), "--threads", str(args.threads)]
            if args.standalone:
                cmd += ["--standalone", "--layout", args.layout]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if p.returncode:
                raise SystemExit(f"{name} on {device} failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"  {r['model']:<17} {device:<5} {r['samples_per_s']:9.1f} samples/s  "
                  f"{r['total_params'] / 1e6:6.2f}M parameters  peak {r['peak_memory_mb']:7.0f} MB", flush=True)
    for device in devices:
        ref = [r for r in rows if r["model"].startswith("lstm") and r["device"] == device]
        for r in rows:
            if r["device"] == device and ref:
                r["slowdown_vs_lstm"] = ref[0]["samples_per_s"] / r["samples_per_s"]
    info = {"torch": torch.__version__, "cpu_threads": rows[0]["threads"] if rows else torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "module": "standalone stand-in" if args.standalone else "MlirPolicyModule", "rows": rows,
            "command": "python bench/learner.py " + " ".join(sys.argv[1:])}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"\n{'model':<17} {'device':<6} {'samples/s':>10} {'x slower than lstm':>19} {'encoder':>10} {'total':>10} "
          f"{'peak MB':>8}")
    for r in rows:
        print(f"{r['model']:<17} {r['device']:<6} {r['samples_per_s']:10.1f} {r.get('slowdown_vs_lstm', 1.0):19.2f} "
              f"{r['encoder_params'] / 1e6:9.2f}M {r['total_params'] / 1e6:9.2f}M {r['peak_memory_mb']:8.0f}")
    print(f"(one PPO update: forward, masked distribution, value, clipped loss, backward, Adam; batch {args.batch}, "
          f"median of {args.rounds} rounds; torch {torch.__version__}, {info['cpu_threads']} CPU threads"
          f"{', GPU ' + info['gpu'] if info['gpu'] else ', no CUDA device'}; peak: RSS above the process's "
          f"before the module on the CPU, torch's peak allocation on CUDA)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
