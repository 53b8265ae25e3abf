"""Learner cost of the encoders (pure torch: no Ray, no MLIR needed).

Forward + backward samples per second of the policy network a PPO learner
updates (encoder, policy backbone, the heads that give the 311 action logits,
a value head), and parameter counts, for `lstm`, full `distilbert` and a small
distilbert; on the CPU and, where CUDA is present, on the GPU. Medians of
several timed rounds after a warm-up.

    python bench/learner.py [--batch 64] [--rounds 5] [--threads N]
Writes bench/results/learner.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rllib_models.encoders import build_encoder  # noqa: E402

try:  # the layout the env publishes; the defaults below are the same numbers
    from envs.mlir import ActionConfig, FeatureConfig, FeatureLayout
    _lay = FeatureLayout(FeatureConfig(), ActionConfig())
    OP_DIM, HISTORY_DIM = _lay.op_size, _lay.history_size
except Exception:  # a GPU machine with torch and transformers only
    OP_DIM, HISTORY_DIM = 1322, 198
N_LOGITS = 8 + 3 * 12 * 8 + 12 + 3  # transformation, tiles per tiling transformation, pointer, unroll

MODELS = {
    "lstm": ("lstm", {}),
    "distilbert": ("distilbert", {}),
    "distilbert-small": ("distilbert", dict(proj_hidden=256, dim=256, n_layers=2, n_heads=4, hidden_dim=1024)),
}


class PolicyNet(nn.Module):
    """What the learner updates: MlirPolicyModule's parts, without RLlib."""

    def __init__(self, model_type, enc_cfg, shared_vf, hidden=256):
        super().__init__()
        self.encoder = build_encoder(model_type, OP_DIM, HISTORY_DIM, **enc_cfg)
        self.vf_encoder = None if shared_vf else build_encoder(model_type, OP_DIM, HISTORY_DIM, **enc_cfg)
        self.pi = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, N_LOGITS))
        self.vf = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, op, prod, hist):
        e = self.encoder(op, prod, hist)
        ev = e if self.vf_encoder is None else self.vf_encoder(op, prod, hist)
        return self.pi(e), self.vf(ev).squeeze(-1)


def measure(name: str, device: str, batch: int, rounds: int, steps: int) -> dict:
    model_type, enc_cfg = MODELS[name]
    torch.manual_seed(0)
    net = PolicyNet(model_type, enc_cfg, shared_vf=(model_type == "distilbert")).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    op = torch.randn(batch, OP_DIM, device=device)
    prod = torch.randn(batch, OP_DIM, device=device)
    hist = torch.rand(batch, HISTORY_DIM, device=device)

    def step():
        logits, values = net(op, prod, hist)
        loss = torch.log_softmax(logits, -1).mean() + values.pow(2).mean()  # a stand-in PPO loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    rates = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - t))
    enc = sum(p.numel() for p in net.encoder.parameters())
    total = sum(p.numel() for p in net.parameters())
    return {"model": name, "device": device, "batch": batch, "samples_per_s": statistics.median(rates),
            "encoder_params": enc, "total_params": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per timed round")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "learner.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for name in MODELS:
            r = measure(name, device, args.batch, args.rounds, args.steps)
            rows.append(r)
            print(f"  {name:<17} {device:<5} {r['samples_per_s']:9.1f} samples/s  "
                  f"{r['total_params'] / 1e6:6.2f}M parameters", flush=True)
    for device in devices:
        base = next(r for r in rows if r["model"] == "lstm" and r["device"] == device)["samples_per_s"]
        for r in rows:
            if r["device"] == device:
                r["slowdown_vs_lstm"] = base / r["samples_per_s"]
    info = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"\n{'model':<17} {'device':<6} {'samples/s':>10} {'x slower than lstm':>19} {'encoder':>10} {'total':>10}")
    for r in rows:
        print(f"{r['model']:<17} {r['device']:<6} {r['samples_per_s']:10.1f} {r['slowdown_vs_lstm']:19.2f} "
              f"{r['encoder_params'] / 1e6:9.2f}M {r['total_params'] / 1e6:9.2f}M")
    print(f"(forward + backward + Adam step, batch {args.batch}, median of {args.rounds} rounds; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          f"{', GPU ' + info['gpu'] if info['gpu'] else ', no CUDA device'})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
