"""Learner cost of the encoders (pure torch: no Ray, no MLIR needed).

Forward + backward samples per second of the policy network a PPO learner
updates (encoder, policy backbone, the heads that give the action logits of
the env's layout, a value head), and parameter counts, for `lstm`, full `distilbert` and a small
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
from rllib_models.layout import logit_count  # noqa: E402



def env_dims(layout_file: str = "") -> dict:
    """Sizes of the env's observation and action layout: from the env itself, or,
    where the MLIR layer is not installed (a GPU machine with torch only), from a
    JSON file written by ``--write-layout`` on a machine that has it."""
    if layout_file:
        with open(layout_file) as f:
            return json.load(f)
    from envs import ActionLayout
    from envs.mlir import FeatureLayout
    feats = FeatureLayout()
    return {"op_dim": feats.op_size, "history_dim": feats.history_size, "n_logits": logit_count(ActionLayout().spec())}


MODELS = {
    "lstm": ("lstm", {}),
    "distilbert": ("distilbert", {}),
    "distilbert-small": ("distilbert", dict(proj_hidden=256, dim=256, n_layers=2, n_heads=4, hidden_dim=1024)),
}


class PolicyNet(nn.Module):
    """What the learner updates: MlirPolicyModule's parts, without RLlib."""

    def __init__(self, model_type, enc_cfg, shared_vf, dims, hidden=256):
        super().__init__()
        op, hist = dims["op_dim"], dims["history_dim"]
        self.encoder = build_encoder(model_type, op, hist, **enc_cfg)
        self.vf_encoder = None if shared_vf else build_encoder(model_type, op, hist, **enc_cfg)
        self.pi = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, dims["n_logits"]))
        self.vf = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, op, prod, hist):
        e = self.encoder(op, prod, hist)
        ev = e if self.vf_encoder is None else self.vf_encoder(op, prod, hist)
        return self.pi(e), self.vf(ev).squeeze(-1)


def measure(name: str, device: str, batch: int, rounds: int, steps: int, dims: dict) -> dict:
    model_type, enc_cfg = MODELS[name]
    torch.manual_seed(0)
    net = PolicyNet(model_type, enc_cfg, shared_vf=(model_type == "distilbert"), dims=dims).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    op = torch.randn(batch, dims["op_dim"], device=device)
    prod = torch.randn(batch, dims["op_dim"], device=device)
    hist = torch.rand(batch, dims["history_dim"], device=device)

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
    ap.add_argument("--layout", default="", help="sizes from this JSON (written by --write-layout) instead of the env")
    ap.add_argument("--write-layout", default="", help="write the env's sizes to this JSON and exit")
    args = ap.parse_args()
    dims = env_dims(args.layout)
    if args.write_layout:
        with open(args.write_layout, "w") as f:
            json.dump(dims, f)
        print(f"wrote {args.write_layout}: {dims}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for name in MODELS:
            r = measure(name, device, args.batch, args.rounds, args.steps, dims)
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
