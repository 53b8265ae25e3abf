"""A learned cost model over the time cache: rank many sampled schedules, measure the best few.

Every measurement ever made is in the Parquet time cache (program hash,
schedule text, machine fingerprint, time).  This model learns, from the
records of *training* programs on this machine's fingerprint, which schedules
of a program run faster than others, and ranks schedules of programs it has
never seen, so that a search (`envs.search.ranked_search`) samples hundreds of
schedules (random or from the policy: no compilation, only the pure-Python
masks) and spends its measurements on the few the model likes best, as TVM's
Ansor and MetaSchedule do with theirs.

Per op, a feature vector of the op as the schedule leaves it (`op_vector`:
the op's type and named op (a conv's data layout), bounds, iterators,
arithmetic and largest access stride, its ActionHistory, the final tile and
its vector size, threads and peeled pieces); small MLPs (an ensemble of 5,
averaged) score each op; a program's predicted log time is the log-sum-exp of
its ops' scores (time adds up over ops).  Trained on log times centred per program (only the
order within a program matters), so times of different programs and sizes
share one model.

Programs of the measuring stick (the eval split and the imported blocks) are
never trained on: `training_records` refuses them, and a saved model lists
the programs it learned from so that `bench/vs_pytorch.py` can check.

    python -m envs.cost_model train --cache-dir ~/.cache/mlir_rl/times --out cost_model.pt
    python -m envs.cost_model collect --budget 96 --cache-dir DIR   # random measurements of the train split
    python -m envs.cost_model collect --budget 16 --cost-model cost_model.pt   # then the model's best picks
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .mlir import ACTIONS, ARITH_KINDS, OP_TYPES, FeatureLayout, Program, ProgramState, Schedule
from .mlir.config import ActionConfig, FeatureConfig
from .mlir.errors import ScheduleError

FEATURE_VERSION = 4
"""Bumped when `op_vector` changes: a saved model of another version does not load."""


def op_vector(layout: FeatureLayout, ps: ProgramState, tag: str) -> np.ndarray:
    """Features of one op as `ps` leaves it (after all its actions)."""
    s = ps.states[tag]
    op = s.op
    L = layout.fc.max_loops
    v: List[float] = [1.0 if s.op_type == t else 0.0 for t in OP_TYPES]
    orig = list(op.bounds) + [1] * (L - len(op.bounds))
    v += [math.log2(b) / 12.0 for b in orig[:L]]
    v += [1.0 if it == "reduction" else 0.0 for it in op.iterator_types] + [0.0] * (L - len(op.iterator_types))
    v += [math.log1p(c) for c in op.arith]
    tile = list(s.bounds) + [1] * (L - len(s.bounds))
    v += [math.log2(max(b, 1)) / 12.0 for b in tile[:L]]
    points = sum(math.log2(max(b, 1)) for b in op.bounds)
    inner = sum(math.log2(max(b, 1)) for b in s.bounds)
    v += [points / 30.0, inner / 30.0, (points - inner) / 30.0,
          math.log2(s.vector_elements(s.bounds)) / 16.0, math.log2(len(s.pieces)) / 4.0,
          float(s.parallel), float(s.tiled), math.log2(s.unroll or 1) / 5.0,
          float(any(a.name in ("V", "R") for a in s.actions)), len(s.actions) / 5.0, float(s.fused_into is not None)]
    v += [float(sum(isinstance(a, cls) for a in s.actions)) for cls in ACTIONS]
    v += list(layout.action_history(s))
    v += [1.0 if op.name == n else 0.0 for n in NAMED_OPS]
    v += [math.log2(max([abs(c) for m in op.loads for row in m for c in row] + [1]))]
    return np.asarray(v, np.float32)


NAMED_OPS = ("linalg.generic", "linalg.matmul", "linalg.batch_matmul", "linalg.fill", "linalg.add",
             "linalg.conv_2d_nhwc_hwcf", "linalg.conv_2d_nhwc_fhwc", "linalg.conv_2d_nchw_fchw",
             "linalg.depthwise_conv_2d_nhwc_hwc", "linalg.pooling_nhwc_max", "linalg.pooling_nhwc_sum", "linalg.pooling_nchw_max", "linalg.pooling_nchw_sum")
"""Named ops told apart (the data layout of a conv matters to its best schedule), the rest as none."""


def vector_width(layout: FeatureLayout) -> int:
    """Length of `op_vector` (it depends only on the layout)."""
    return (len(OP_TYPES) + 3 * layout.fc.max_loops + len(ARITH_KINDS) + 11 + len(ACTIONS) + layout.history_size
            + len(NAMED_OPS) + 1)


def program_vectors(layout: FeatureLayout, program: Program, schedule: Schedule,
                    cfg: ActionConfig) -> np.ndarray:
    """[ops, features] of a whole schedule (raises ScheduleError if it does not replay)."""
    ps = ProgramState.replay(program, schedule, cfg)
    return np.stack([op_vector(layout, ps, t) for t in program.tags])


def usable_vectors(layout: FeatureLayout, program: Program, text: str, cfg: ActionConfig) -> Optional[np.ndarray]:
    """`program_vectors` of a cached schedule text, or None for one this layout cannot replay
    (a schedule of an older action set)."""
    try:
        return program_vectors(layout, program, Schedule.parse(text), cfg)
    except (ScheduleError, ValueError):
        return None


@dataclass
class Record:
    program: str
    schedule: str
    log_time: float


def training_records(folders: Sequence[str], programs: Dict[str, Program], fingerprint: str,
                     refuse: Iterable[str] = ()) -> List[Record]:
    """The cache's ok measurements of `programs` (by name, and the hash must match: a
    changed program is another program) on `fingerprint`; a name in `refuse` is an error."""
    import pyarrow.parquet as pq
    refused = sorted(set(programs) & set(refuse))
    if refused:
        raise ValueError(f"the cost model may not learn from {', '.join(refused)}: "
                         f"programs of the measuring stick (eval split or imported blocks)")
    hashes = {p.hash: name for name, p in programs.items()}
    out: Dict[Tuple[str, str], Record] = {}
    for folder in folders:
        folder = os.path.expanduser(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: no such time cache folder")
        for root, _, files in os.walk(folder):
            for f in sorted(files):
                if not f.endswith(".parquet"):
                    continue
                try:
                    t = pq.read_table(os.path.join(root, f), columns=["program_hash", "schedule", "fingerprint",
                                                                      "status", "time_s"])
                except Exception as e:  # a partial file: the cache itself reports it; skip here too
                    print(f"cost model: skipped {os.path.join(root, f)}: {e}", file=sys.stderr)
                    continue
                for h, sched, fp, st, ts in zip(*(t[c].to_pylist() for c in t.column_names)):
                    if fp == fingerprint and st == "ok" and h in hashes and ts:
                        out[(h, sched)] = Record(hashes[h], sched, math.log(ts))
    return list(out.values())


class CostModel:
    """Scores schedules of a program: lower predicted log time = faster."""

    def __init__(self, features: FeatureConfig = FeatureConfig(), actions: ActionConfig = ActionConfig(),
                 hidden: int = 128, seed: int = 0, members: int = 5):
        import torch
        self.fc, self.ac = features, actions
        self.layout = FeatureLayout(features, actions)
        self.width = vector_width(self.layout)
        torch.manual_seed(seed)
        # An ensemble of small MLPs, their predictions averaged: one network's top picks depend on
        # its initial weights about as much as on its features (held-out programs, docs/ENV.md).
        self.nets = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(self.width, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, hidden // 2), torch.nn.ReLU(), torch.nn.Linear(hidden // 2, 1))
            for _ in range(members))
        self.hidden, self.members = hidden, members
        self.meta: Dict = {"feature_version": FEATURE_VERSION, "programs": []}

    # --- scoring ---------------------------------------------------------------------------
    @staticmethod
    def _forward(net, x, seg, n):
        """Per-program log-sum-exp of the per-op scores of one member."""
        import torch
        o = net(x).squeeze(-1)
        c = o.max().detach()
        tot = torch.zeros(n, dtype=o.dtype).index_add_(0, seg, torch.exp(o - c))
        return torch.log(tot) + c

    def _stack(self, mats: List[np.ndarray]):
        import torch
        x = np.concatenate(mats)
        seg = np.concatenate([np.full(len(m), i) for i, m in enumerate(mats)])
        # No learned normalization: the features are scaled by hand to about [0, 1], and a feature
        # constant over the training programs would get a huge z-score on a new one.
        return torch.as_tensor(x), torch.as_tensor(seg, dtype=torch.long)

    def predict(self, program: Program, schedules: Sequence[Schedule]) -> np.ndarray:
        """Predicted log time (up to a constant per program) of each schedule."""
        return self.predict_vectors([program_vectors(self.layout, program, s, self.ac) for s in schedules])

    def predict_vectors(self, mats: List[np.ndarray]) -> np.ndarray:
        """`predict` of schedules already made into `program_vectors`."""
        import torch
        if not mats:
            return np.zeros(0)
        if mats[0].shape[1] != self.width:
            raise ValueError(f"this cost model reads {self.width} features per op, the layout gives "
                             f"{mats[0].shape[1]}: it was trained with other action or feature settings")
        x, seg = self._stack(mats)
        with torch.no_grad():
            return torch.stack([self._forward(net, x, seg, len(mats)) for net in self.nets]).mean(0).numpy()

    # --- training --------------------------------------------------------------------------
    def fit(self, records: List[Record], programs: Dict[str, Program], epochs: int = 60, lr: float = 1e-3,
            batch_programs: int = 4, log=print) -> Dict:
        """Train on `records` (log times centred per program). Returns the training summary."""
        import torch
        data: Dict[str, Tuple[List[np.ndarray], List[float]]] = {}
        skipped = 0
        for r in records:
            m = usable_vectors(self.layout, programs[r.program], r.schedule, self.ac)
            if m is None:
                skipped += 1
                continue
            data.setdefault(r.program, ([], []))
            data[r.program][0].append(m)
            data[r.program][1].append(r.log_time)
        data = {k: v for k, v in data.items() if len(v[1]) >= 8}  # too few to learn an order from
        if not data:
            raise ValueError("no program has 8 or more usable measurements in the cache: nothing to learn from "
                             "(run `python -m envs.cost_model collect` first)")
        names = sorted(data)
        tensors = {}
        for k in names:
            x, seg = self._stack(data[k][0])
            y = torch.as_tensor(np.asarray(data[k][1], np.float32))
            tensors[k] = (x, seg, len(data[k][1]), y - y.mean())
        t0 = time.time()
        for j, net in enumerate(self.nets):
            self._fit_one(net, tensors, list(names), epochs, lr, batch_programs, np.random.default_rng(j),
                          (lambda m: log(f"  member {j + 1}/{self.members}, {m}")) if log else None, t0)
        self.meta = {"programs": sorted(data), "records": sum(len(v[1]) for v in data.values()),
                     "skipped": skipped, "feature_version": FEATURE_VERSION}
        return self.meta

    def _fit_one(self, net, tensors, names, epochs, lr, batch_programs, rng, log, t0) -> None:
        import torch
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
        for ep in range(epochs):
            rng.shuffle(names)
            total = 0.0
            for i in range(0, len(names), batch_programs):
                loss = 0.0
                for k in names[i:i + batch_programs]:
                    x, seg, n, yc = tensors[k]
                    p = self._forward(net, x, seg, n)
                    loss = loss + ((p - p.mean() - yc) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
            if log and (ep % 20 == 0 or ep == epochs - 1):
                log(f"epoch {ep + 1}/{epochs}: loss {total / len(names):.4f} ({time.time() - t0:.0f} s)")

    def learned_from(self, names: Iterable[str]) -> List[str]:
        """Those of `names` this model was trained on (a model is judged on programs it has not seen)."""
        return sorted(set(self.meta.get("programs", [])) & set(names))

    # --- files -----------------------------------------------------------------------------
    def save(self, path: str, **meta) -> None:
        import torch
        self.meta.update(meta)
        torch.save({"state": self.nets.state_dict(), "hidden": self.hidden, "members": self.members,
                    "meta": self.meta, "features": vars(self.fc), "actions": vars(self.ac)}, path)

    @classmethod
    def load(cls, path: str, actions: Optional[ActionConfig] = None) -> "CostModel":
        import torch
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no cost model here (train one: python -m envs.cost_model train)")
        d = torch.load(path, weights_only=False)
        if d["meta"].get("feature_version") != FEATURE_VERSION:
            raise ValueError(f"{path}: a cost model of feature version {d['meta'].get('feature_version')}, "
                             f"this code reads version {FEATURE_VERSION}: train it again")
        m = cls(FeatureConfig(**d["features"]), actions or ActionConfig(**d["actions"]), hidden=d["hidden"],
                members=d["members"])
        m.nets.load_state_dict(d["state"])
        m.meta = d["meta"]
        return m


def ranking_quality(model: CostModel, records: List[Record], programs: Dict[str, Program],
                    top: int = 8) -> Dict[str, Dict[str, float]]:
    """Per program: Spearman correlation of predicted and measured times, and the measured
    speedup of the model's top-`top` pick over the median schedule against the best's."""
    by: Dict[str, List[Record]] = {}
    for r in records:
        by.setdefault(r.program, []).append(r)
    out = {}
    for name, rs in sorted(by.items()):
        mats, ys = [], []
        for r in rs:
            m = usable_vectors(model.layout, programs[name], r.schedule, model.ac)
            if m is not None:
                mats.append(m)
                ys.append(r.log_time)
        if len(ys) < top:
            continue
        p = model.predict_vectors(mats)
        ys = np.asarray(ys)
        rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
        rho = float(np.corrcoef(rank(p), rank(ys))[0, 1])
        picked = ys[np.argsort(p)[:top]].min()
        out[name] = {"n": len(ys), "spearman": rho, "top_pick_vs_median": float(np.exp(np.median(ys) - picked)),
                     "best_vs_median": float(np.exp(np.median(ys) - ys.min()))}
    return out


def _train_programs(split_rows: List[Dict]) -> Dict[str, Program]:
    return {r["name"]: Program.from_text(r["mlir"], r["name"]) for r in split_rows}


def stick_names() -> List[str]:
    """Names of the measuring stick's programs (eval split + imported blocks): never trained on."""
    from .suites import measuring_stick_rows
    return [r["name"] for r in measuring_stick_rows()]


def learnable_rows() -> List[Dict]:
    """Train-split rows the cost model may learn from: not the imported blocks (on the measuring stick)."""
    import pyarrow.parquet as pq
    from .suites import suite_path
    stick = set(stick_names())
    return [r for r in pq.read_table(suite_path("train")).to_pylist() if r["name"] not in stick]


def main(argv: Optional[List[str]] = None) -> int:
    from .mlir.cache import default_cache_dir, machine_fingerprint
    from .mlir.config import available_cpus
    from rllib_models.callbacks import geomean  # the project's one geometric mean (the CLI has Ray)
    ap = argparse.ArgumentParser(prog="python -m envs.cost_model", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train on the time cache's records of training programs")
    tr.add_argument("--cache-dir", nargs="+", default=[default_cache_dir()])
    tr.add_argument("--threads", type=int, default=0, help="the timing threads whose records count (default: CPUs)")
    tr.add_argument("--hold-out", nargs="*", default=[],
                    help="training programs kept out of training and reported (a validation subset)")
    tr.add_argument("--epochs", type=int, default=60)
    tr.add_argument("--seed", type=int, default=0, help="the networks' initial weights")
    tr.add_argument("--members", type=int, default=5, help="networks in the ensemble (their predictions averaged)")
    tr.add_argument("--out", default="cost_model.pt")
    co = sub.add_parser("collect", help="random-search measurements of the training programs into a cache")
    co.add_argument("--budget", type=int, default=96, help="measurements per program")
    co.add_argument("--threads", type=int, default=0)
    co.add_argument("--cache-dir", default=default_cache_dir())
    co.add_argument("--seed", type=int, default=11)
    co.add_argument("--only", nargs="*", default=[], help="only these training programs")
    co.add_argument("--cost-model", default="",
                    help="measure this model's best picks (ranked_search) instead of random schedules: the region "
                         "where its ranking matters, as Ansor's measure-and-retrain rounds do")
    args = ap.parse_args(argv)
    threads = args.threads or available_cpus()
    if args.cmd == "collect":
        import tempfile
        from . import MlirScheduleEnv, random_search, ranked_search
        from .suites import write_suite
        rows = learnable_rows()
        unknown = sorted(set(args.only) - {r["name"] for r in rows})
        if unknown:
            ap.error(f"--only: {', '.join(unknown)} not among the training programs the model may learn from")
        rows = [r for r in rows if not args.only or r["name"] in args.only]
        model = CostModel.load(args.cost_model) if args.cost_model else None
        with tempfile.TemporaryDirectory() as tmp:
            suite = os.path.join(tmp, "train.parquet")
            write_suite(rows, suite)
            env = MlirScheduleEnv({"suite": suite, "measure": {"threads": threads, "repetitions": 3,
                                                                "cache_dir": args.cache_dir}})
            t0 = time.time()
            try:
                for i, r in enumerate(rows):
                    res = (ranked_search(env, r["name"], args.budget, model, seed=args.seed) if model
                           else random_search(env, r["name"], args.budget, seed=args.seed))
                    print(f"[{i + 1}/{len(rows)}] {r['name']}: best x{res.speedup:.1f} over the untransformed "
                          f"({time.time() - t0:.0f} s)", flush=True)
            finally:
                env.close()
        return 0
    fp = machine_fingerprint(threads)
    rows = learnable_rows()
    unknown = sorted(set(args.hold_out) - {r["name"] for r in rows})
    if unknown:
        ap.error(f"--hold-out: {', '.join(unknown)} not among the training programs the model may learn from")
    programs = _train_programs(rows)
    records = training_records(args.cache_dir, programs, fp, refuse=stick_names())
    train = [r for r in records if r.program not in args.hold_out]
    held = [r for r in records if r.program in args.hold_out]
    print(f"cost model: {len(train)} measurements of {len({r.program for r in train})} training programs "
          f"(fingerprint {fp[:12]}, {threads} threads); {len(held)} held out", flush=True)
    model = CostModel(seed=args.seed, members=args.members)
    model.fit(train, programs, epochs=args.epochs)
    model.save(args.out, fingerprint=fp, threads=threads, held_out=sorted(args.hold_out),
               cache_dirs=[os.path.abspath(os.path.expanduser(c)) for c in args.cache_dir])
    for title, rs in (("held out", held), ("trained on", train)):
        q = ranking_quality(model, rs, programs)
        if not q:
            continue
        print(f"{title}: program, measurements, Spearman, top-8 pick / median, best / median")
        for name, d in q.items():
            print(f"  {name:<40} {d['n']:5d} {d['spearman']:6.2f} x{d['top_pick_vs_median']:6.2f} "
                  f"x{d['best_vs_median']:6.2f}")
        caught = geomean([d["top_pick_vs_median"] / d["best_vs_median"] for d in q.values()])
        print(f"  geometric mean of top-8 pick / best: {caught:.3f}; "
              f"mean Spearman {np.mean([d['spearman'] for d in q.values()]):.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
