"""Encoders, the masked hierarchical distribution, the RLModule, tune_run.py and evaluate.py."""
import csv
import itertools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from envs import MlirScheduleEnv
from envs import ActionLayout
from envs.mlir import ActionConfig, FeatureConfig, Schedule
from rllib_models import ENCODERS, build_encoder
from rllib_models.distribution import FLOAT_MIN, HierarchicalMaskedDistribution
from rllib_models.module import MlirPolicyModule

from conftest import short_tmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_BERT = dict(proj_hidden=64, dim=64, n_layers=2, n_heads=4, hidden_dim=128)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = MlirScheduleEnv({"benchmarks": ["resnet_18_fc_batch_8", "resnet_18_layer2_conv_3x3_2",
                                        "bert_base_attention_scores_q_kt", "resnet_18_maxpool_3x3_2"],
                         "measure": {"threads": 1, "repetitions": 1,
                                     "cache_dir": str(tmp_path_factory.mktemp("cache"))}})
    yield e
    e.close()


@pytest.fixture(scope="module")
def observations(env):
    """Real observations from random episodes over several benchmarks."""
    rng = np.random.default_rng(0)
    out = []
    while len(out) < 100:  # whatever the action layout makes of the episodes' lengths
        for name in env.names:
            obs, _ = env.reset(options={"benchmark": name})
            done = False
            while not done:
                out.append(obs)
                obs, _, done, _, _ = env.step(env.sample_valid_action(obs, rng))
    return out


def _batch(obs_list):
    return {"obs": {k: torch.as_tensor(np.stack([o[k] for o in obs_list])) for k in obs_list[0]}}


def _module(env, **cfg):
    torch.manual_seed(0)
    return MlirPolicyModule(observation_space=env.observation_space, action_space=env.action_space,
                            model_config={**cfg, "action_layout": env.action_layout_spec()})


def test_encoders_shapes_and_sizes():
    assert {"lstm", "distilbert"} <= set(ENCODERS)
    op, prod, hist = torch.randn(5, 1322), torch.randn(5, 1322), torch.rand(5, 198)
    lstm = build_encoder("lstm", 1322, 198)
    assert lstm(op, prod, hist).shape == (5, 512 + 198) and lstm.out_dim == 710
    n = sum(p.numel() for p in lstm.parameters())
    # Linear(1322,512) + Linear(512,512) + LSTM(512,512): MLIR-RL's 2-3M.
    assert n == (1322 * 512 + 512) + (512 * 512 + 512) + 4 * (2 * 512 * 512 + 2 * 512)
    bert = build_encoder("distilbert", 1322, 198)
    assert bert(op, prod, hist).shape == (5, 768 + 198)
    total = sum(p.numel() for p in bert.parameters())
    words = bert.bert.embeddings.word_embeddings.weight.numel()
    assert words == 768  # one token: the 23M-parameter vocabulary table is not carried
    assert 43_000_000 < total < 44_000_000  # DistilBERT's 66M less its word embeddings
    small = build_encoder("distilbert", 1322, 198, **SMALL_BERT)
    assert small(op, prod, hist).shape == (5, 64 + 198)
    with pytest.raises(ValueError, match="model.model_type"):
        build_encoder("convnext", 1322, 198)
    with pytest.raises(ValueError, match="model.encoder"):
        build_encoder("lstm", 1322, 198, colour=3)


def test_distilbert_is_fit_for_ppo():
    """No dropout by default (train and eval mode agree), and a missing producer is
    hidden from attention (whatever its token holds, the embedding is the same)."""
    torch.manual_seed(0)
    enc = build_encoder("distilbert", 40, 6, **SMALL_BERT)
    op, prod, hist = torch.randn(3, 40), torch.randn(3, 40), torch.rand(3, 6)
    prod[1] = 0.0  # op 1 has no producer
    enc.train()
    a = enc(op, prod, hist)
    enc.eval()
    assert torch.equal(a, enc(op, prod, hist))
    b = op.shape[0]
    tokens = torch.stack([enc.cls.expand(b, -1), enc.proj(op), enc.proj(prod), enc.sep.expand(b, -1)], dim=1)
    mask = torch.ones(b, 4, dtype=torch.long)
    mask[1, 2] = 0
    noisy = tokens.clone()
    noisy[:, 2] = torch.randn_like(noisy[:, 2])
    with torch.no_grad():
        hidden, shown = enc.attend(tokens, mask, hist), enc.attend(noisy, mask, hist)
    assert torch.allclose(hidden[1], shown[1], atol=1e-5) and torch.allclose(hidden[1], a[1].detach(), atol=1e-5)
    assert not torch.allclose(hidden[0], shown[0], atol=1e-3)  # a real producer is seen


@pytest.mark.parametrize("cfg", [{"model_type": "lstm"}, {"model_type": "distilbert", "encoder": SMALL_BERT}])
def test_sampled_actions_are_never_masked(env, observations, cfg):
    module = _module(env, **cfg)
    batch = _batch(observations)
    with torch.no_grad():
        out = module.forward_exploration(batch)
    dist = module.get_exploration_action_dist_cls().from_logits(out["action_dist_inputs"])
    masks = [{k: o[k] for k in o if k.startswith("mask")} for o in observations]
    n = 0
    for _ in range(25):
        actions = dist.sample()
        assert torch.isfinite(dist.logp(actions)).all()
        for a, m in zip(actions.numpy(), masks):
            _check_masks(env, a, m)
            n += 1
    assert n == 25 * len(observations) >= 2500


def _check_masks(env, a, m):
    t = int(a[0])
    assert m["mask_transformation"][t] == 1
    read = np.zeros(len(a), bool)
    read[0] = True
    for r in (r for r in env.layout.heads if r.transformation == t):
        hm = m[r.mask].reshape(r.head.positions, r.head.choices)
        chosen = a[r.offset:r.offset + r.head.positions]
        assert all(hm[p, c] for p, c in enumerate(chosen))
        read[r.offset:r.offset + r.head.positions] = True
    assert not a[~read].any()  # positions the transformation does not read are fixed to 0


# --- the distribution against an independent reference, on a layout small enough to enumerate ---

SMALL = ActionLayout(FeatureConfig(max_loops=2), ActionConfig(tile_sizes=(1, 2), unroll_factors=(2, 4))).spec()


def _valid_vectors(spec):
    """Every action vector of the layout (positions a transformation does not read at 0)."""
    out = []
    for t in range(len(spec["transformations"])):
        heads = [h for h in spec["heads"] if h["transformation"] == t]
        slots = [(h["offset"] + p, h["choices"]) for h in heads for p in range(h["positions"])]
        for combo in itertools.product(*(range(c) for _, c in slots)):
            v = [0] * len(spec["nvec"])
            v[0] = t
            for (pos, _), c in zip(slots, combo):
                v[pos] = c
            out.append(v)
    return torch.tensor(out)


def _random_masked_logits(spec, batch, gen):
    """Random logits with random masks folded in (at least one choice per position allowed)."""
    parts, masks = [], []
    for positions, choices in [(1, len(spec["transformations"]))] + [(h["positions"], h["choices"])
                                                                      for h in spec["heads"]]:
        m = torch.rand(batch, positions, choices, generator=gen) < 0.6
        m[torch.arange(batch)[:, None], torch.arange(positions)[None],
          torch.randint(choices, (batch, positions), generator=gen)] = True
        parts.append(torch.randn(batch, positions * choices, generator=gen) * 2)
        masks.append(m.reshape(batch, -1))
    logits, mask = torch.cat(parts, -1), torch.cat(masks, -1)
    return torch.where(mask, logits, torch.full_like(logits, FLOAT_MIN)), logits, mask


def _plogp(p):
    return torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))


def test_distribution_matches_enumeration_of_every_action():
    """Log-probabilities, KL, entropy and sampling checked against sums over every
    action of a small layout, computed here from the definitions."""
    gen = torch.Generator().manual_seed(0)
    spec, B = SMALL, 6
    vecs = _valid_vectors(spec)
    # per transformation, every combination of its heads' choices: T/TP/TF 3 choices x 2 loops, I 2, U 2, ...
    assert len(vecs) == sum(math.prod(h["choices"] ** h["positions"] for h in spec["heads"] if h["transformation"] == t)
                            for t in range(len(spec["transformations"])))
    assert sum(1 for v in vecs if spec["transformations"][int(v[0])] == "T") == 9
    p_logits, _, mask = _random_masked_logits(spec, B, gen)
    _, q_raw, _ = _random_masked_logits(spec, B, gen)
    q_logits = torch.where(mask, q_raw, torch.full_like(q_raw, FLOAT_MIN))  # q masks what p masks
    P = HierarchicalMaskedDistribution(p_logits, layout=spec)
    Q = HierarchicalMaskedDistribution(q_logits, layout=spec)
    lp = torch.stack([P.logp(v.expand(B, -1)) for v in vecs], -1)  # (B, actions)
    lq = torch.stack([Q.logp(v.expand(B, -1)) for v in vecs], -1)
    prob = lp.exp()
    assert torch.allclose(prob.sum(-1), torch.ones(B), atol=1e-5)  # normalized over every action
    assert (prob == 0).any() and (lp[prob == 0] == -math.inf).all()  # masked: log-probability -inf
    # KL from its definition, a sum over the actions p allows.
    ref_kl = torch.where(prob > 0, prob * (lp - lq), torch.zeros_like(prob)).sum(-1)
    assert torch.allclose(P.kl(Q), ref_kl, atol=1e-4) and (ref_kl > 1e-3).all()
    assert torch.allclose(P.kl(P), torch.zeros(B), atol=1e-6)
    # Entropy: H(t) + sum_t p(t) * H(heads | t) / (open positions of t), with H(heads | t)
    # enumerated; without the division it is the exact joint entropy.
    t_of, n_t = vecs[:, 0], len(spec["transformations"])
    p_t = torch.stack([prob[:, t_of == t].sum(-1) for t in range(n_t)], -1)
    weighted = exact = -_plogp(p_t).sum(-1)
    head_masks = torch.split(mask[:, n_t:], [h["positions"] * h["choices"] for h in spec["heads"]], -1)
    for t in range(n_t):
        h_cond = -_plogp(prob[:, t_of == t] / p_t[:, t:t + 1].clamp_min(1e-30)).sum(-1)
        n_open = sum(((m.reshape(B, h["positions"], h["choices"]).sum(-1) > 1).sum(-1)
                      for h, m in zip(spec["heads"], head_masks) if h["transformation"] == t), torch.zeros(B))
        weighted = weighted + p_t[:, t] * h_cond / n_open.clamp(min=1)
        exact = exact + p_t[:, t] * h_cond
    assert torch.allclose(P.entropy(), weighted, atol=1e-4)
    assert torch.allclose(-_plogp(prob).sum(-1), exact, atol=1e-4)
    # Samples: never masked, at the frequencies of the probabilities.
    index = {tuple(v.tolist()): i for i, v in enumerate(vecs)}
    counts = torch.zeros(B, len(vecs))
    N = 4000
    for _ in range(N):
        for b, a in enumerate(P.sample().tolist()):
            counts[b, index[tuple(a)]] += 1  # a KeyError here: a position not read was not 0
    assert (counts[prob == 0] == 0).all()
    assert (counts / N - prob).abs().max() < 0.04
    # The deterministic sample: the most likely transformation, then the best choice of each of its positions.
    det = P.to_deterministic().sample()
    t_best = p_logits[:, :n_t].argmax(-1)
    assert torch.equal(det[:, 0], t_best)
    for h, lg in zip(spec["heads"], torch.split(p_logits[:, n_t:], [h["positions"] * h["choices"]
                                                                     for h in spec["heads"]], -1)):
        best = lg.reshape(B, h["positions"], h["choices"]).argmax(-1)
        sel = t_best == h["transformation"]
        assert torch.equal(det[sel, h["offset"]:h["offset"] + h["positions"]], best[sel])


_NO_COMPILER = r"""
import builtins, json, sys
real_import = builtins.__import__
def guard(name, *a, **k):
    if name.split(".")[0] in ("torch_mlir", "envs"):
        raise ImportError(f"{name} must not be imported by the RL side")
    return real_import(name, *a, **k)
builtins.__import__ = guard
import gymnasium as gym, numpy as np, torch
from rllib_models.module import MlirPolicyModule
d = json.load(open(sys.argv[1]))
obs_space = gym.spaces.Dict({k: gym.spaces.Box(-1e4, 1e4, (n,), np.float32) for k, n in d["obs"].items()})
m = MlirPolicyModule(observation_space=obs_space, action_space=gym.spaces.MultiDiscrete(d["spec"]["nvec"]),
                     model_config={"model_type": "lstm", "action_layout": d["spec"]})
obs = {k: torch.as_tensor(np.array(v, np.float32)) for k, v in d["batch"].items()}
out = m.forward_train({"obs": obs})
dist = m.get_train_action_dist_cls().from_logits(out["action_dist_inputs"])
a = dist.sample()
loss = -dist.logp(a).mean() - 0.01 * dist.entropy().mean() + m.compute_values({"obs": obs}).pow(2).mean()
loss.backward()
assert all(p.grad is not None for p in m.logits_head.parameters())
assert torch.isfinite(loss) and "torch_mlir" not in sys.modules and not any(k.startswith("envs") for k in sys.modules)
print("ok", tuple(a.shape))
"""


def test_rl_side_builds_and_trains_without_the_compiler(env, observations, tmp_path):
    """The module gets the layout through model_config: forward and backward in a
    process where importing torch_mlir (or envs) fails."""
    import json
    batch = observations[:16]
    data = {"spec": env.action_layout_spec(),
            "obs": {k: int(v.shape[0]) for k, v in env.observation_space.spaces.items()},
            "batch": {k: np.stack([o[k] for o in batch]).tolist() for k in batch[0]}}
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "child.py").write_text(_NO_COMPILER)
    r = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "d.json")], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0 and "ok (16, " in r.stdout, r.stderr[-3000:]


def test_saved_module_gives_the_same_greedy_actions(env, observations, tmp_path):
    from ray.rllib.core.rl_module.rl_module import RLModule
    module = _module(env, model_type="distilbert", encoder=SMALL_BERT)
    module.eval()
    batch = _batch(observations[:40])

    def greedy(m):
        with torch.no_grad():
            out = m.forward_inference(batch)
        return m.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"]).to_deterministic().sample()

    before = greedy(module)
    module.save_to_path(str(tmp_path / "module"))
    restored = RLModule.from_checkpoint(str(tmp_path / "module"))
    restored.eval()
    assert torch.equal(greedy(restored), before)


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT, "tune_configs"))
                                        if f.endswith(".yaml")))
def test_every_run_config_builds(name):
    """Each YAML binds to a PPO config and a module, without training."""
    import tune_run
    cfg = tune_run.load_config(os.path.join(ROOT, "tune_configs", name))
    config = tune_run.build_algo_config(cfg)
    threads = config.env_config["measure"]["threads"]
    assert threads == tune_run.timing_threads(cfg) == cfg["env"]["measure"]["threads"]  # set once, in the YAML
    # whoever samples (and so times) reserves the CPUs it times on
    assert (config.num_cpus_per_env_runner if config.num_env_runners else config.num_cpus_for_main_process) >= threads
    one = tune_run.build_algo_config(tune_run.one_trial(cfg))  # a sweep's search spaces at their first values
    assert one.lr == tune_run._first(cfg["ppo"]["lr"])
    r = subprocess.run([sys.executable, "tune_run.py", "--config", os.path.join("tune_configs", name), "--dry-run"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "total" in r.stdout and "env runners:" in r.stdout


def test_distilbert_config_has_the_seeds_hyperparameters():
    import tune_run
    d = tune_run.load_config(os.path.join(ROOT, "tune_configs", "distilbert.yaml"))
    l = tune_run.load_config(os.path.join(ROOT, "tune_configs", "lstm.yaml"))
    assert d["ppo"]["lr"] == 1e-4 and l["ppo"]["lr"] == 1e-3
    assert d["ppo"]["minibatch_size"] < l["ppo"]["minibatch_size"]
    assert d["model"]["vf_share_encoder"] is True


def test_bad_run_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {model_type: lstm}\nenv: {reward: best}\n")
    r = subprocess.run([sys.executable, "tune_run.py", "--config", str(bad), "--dry-run"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and "env.reward" in r.stderr and "Traceback" not in r.stderr
    # The closing evaluation's settings are checked before training, not after it.
    import tune_run
    from evaluate import SAMPLE_TEMPERATURE
    for ev, msg in (("{temperature: 0}", "run.evaluate.temperature must be > 0, got 0.0"),
                    ("{samples: 4, temprature: 2}", "run.evaluate: unknown setting 'temprature'")):
        bad.write_text(f"model: {{model_type: lstm}}\nrun: {{evaluate: {ev}}}\n")
        with pytest.raises(tune_run.ConfigError, match=re.escape(f"{bad}: {msg}")):
            tune_run.closing_evaluation(tune_run.load_config(str(bad)))
    assert tune_run.closing_evaluation(tune_run.load_config(os.path.join(ROOT, "tune_configs", "lstm.yaml"))) == {
        "split": "eval", "benchmarks": None, "samples": 4, "rounds": 3, "temperature": SAMPLE_TEMPERATURE}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A real PPO run through Tune on the smoke config, on the real env."""
    import shutil
    out = tmp_path_factory.mktemp("smoke")
    ray_tmp = short_tmp()  # Ray's own temp dir, ours alone
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, MLIR_RL_CACHE=str(out / "cache"))
    r = subprocess.run([sys.executable, "tune_run.py", "--config", "tune_configs/smoke.yaml", "--results-dir",
                        str(out / "results")], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    yield out, r
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_smoke_training_run_leaves_a_checkpoint_and_an_evaluation(smoke_run):
    out, r = smoke_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Ray dashboard:" in r.stdout and "results:" in r.stdout
    lines = [x for x in r.stdout.splitlines() if " iter " in x]
    assert len(lines) == 2 and "speedup x" in lines[0] and "cache hits" in lines[0]
    # Validated after each iteration on a held-out training program; the best checkpoint is chosen by it.
    assert all(" val x" in x for x in lines), lines
    assert "best checkpoint (by val_speedup_geomean):" in r.stdout
    saved = json.load(open(out / "results" / "smoke" / "env_config.json"))
    assert saved["measure"]["threads"] == 1  # what evaluate.py times with by default
    ckpts = [d for root, dirs, _ in os.walk(out / "results") for d in dirs if d.startswith("checkpoint_")]
    assert ckpts
    rows = list(csv.DictReader(open(out / "results" / "smoke" / "evaluation.csv")))
    assert rows and set(rows[0]) >= {"name", "schedule", "baseline_s", "scheduled_s", "speedup", "correct"}
    assert rows[0]["correct"] == "true"


def test_tensorboard_reads_the_runs_scheduling_metrics(smoke_run):
    """`tensorboard --logdir <results>` (tensorboard from requirements.txt) finds the metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, r = smoke_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = [root for root, _, files in os.walk(out / "results") if any(f.startswith("events.out.tfevents") for f in files)]
    assert len(runs) == 1, runs
    acc = EventAccumulator(runs[0])
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("ray/tune/mlir/speedup_geomean", "ray/tune/val_speedup_geomean", "ray/tune/mlir/cache_hit_rate"):
        assert tag in tags, sorted(t for t in tags if "mlir" in t or "val" in t)
    assert [e.step for e in acc.Scalars("ray/tune/mlir/speedup_geomean")] == [1, 2]


def test_evaluate_on_the_checkpoint(smoke_run, tmp_path):
    out, r = smoke_run
    ckpt = sorted(os.path.join(root, d) for root, dirs, _ in os.walk(out / "results") for d in dirs
                  if d.startswith("checkpoint_"))[-1]
    dest = tmp_path / "eval.parquet"
    r = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", ckpt, "--only", "gpt_2_residual_add",
                        "--samples", "2", "--threads", "1", "--out", str(dest)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    import pyarrow.parquet as pq
    t = pq.read_table(dest).to_pylist()
    assert [x["name"] for x in t] == ["gpt_2_residual_add"] and t[0]["correct"] is True
    assert "geomean" in r.stdout and "random" in r.stdout and "greedy" in r.stdout
    # One .mlir file: scheduled, and written transformed with its script.
    mlir = tmp_path / "mm.mlir"
    from conftest import MATMUL
    mlir.write_text(MATMUL)
    (tmp_path / "mm_torch.py").write_text("import torch\n\ndef model(a, b):\n    return a @ b\n")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--checkpoint", ckpt, "--mlir", str(mlir),
                        "--samples", "1", "--out", str(tmp_path / "one.csv"), "-o", str(tmp_path / "mm_out.mlir"),
                        "--torch", "mm_torch:model"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "one.csv").exists()
    assert "timing threads: 1 (as in training" in r.stdout  # the run's own target, not this machine's CPUs
    assert "ratio to PyTorch x" in r.stdout and "not the same computation" not in r.stderr
    # With a cost model the policy proposes, the model picks (an untrained model: only the plumbing is tested here;
    # tests/test_cost_model.py tests the model).
    from envs.cost_model import CostModel
    CostModel().save(str(tmp_path / "cm.pt"), threads=1)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--checkpoint", ckpt, "--mlir", str(mlir),
                        "--samples", "2", "--cost-model", str(tmp_path / "cm.pt"), "--pool", "8",
                        "--out", str(tmp_path / "cm.csv")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the policy's 2 are the best of 8 of its schedules by" in r.stdout
    assert list(csv.DictReader(open(tmp_path / "cm.csv")))[0]["correct"] == "true"
    bad = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "no RLModule checkpoint" in bad.stderr
    bad = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", ckpt, "--threads", "1", "--rounds", "-1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "--rounds must be >= 0, got -1" in bad.stderr
    bad = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", ckpt, "--temperature", "0"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "--temperature must be > 0, got 0.0" in bad.stderr


def test_the_policys_best_of_k_measures_distinct_schedules_greedy_first(smoke_run, tmp_path):
    """policy_trials (evaluate.py's and the stick's policy_8): the greedy episode, then sampled ones,
    a schedule sampled again not measured again, so that k measurements are k schedules."""
    from evaluate import SAMPLE_TEMPERATURE, load_module, policy_episode, policy_trials
    out, r = smoke_run
    ckpt = sorted(os.path.join(root, d) for root, dirs, _ in os.walk(out / "results") for d in dirs
                  if d.startswith("checkpoint_"))[-1]
    module = load_module(ckpt)
    name, k = "gpt_2_residual_add", 16  # one op, few schedules: the policy's samples repeat
    e = MlirScheduleEnv({"split": "eval", "benchmarks": [name],
                         "measure": {"threads": 1, "repetitions": 1, "cache_dir": str(tmp_path / "cache")}})
    try:
        raw = [policy_episode(e, module, name, deterministic=j < 0, rng_seed=None if j < 0 else 5 + j,
                              measure=False, temperature=SAMPLE_TEMPERATURE)["schedule"] for j in range(-1, 4 * k)]
        assert len(set(raw)) < len(raw)  # samples do repeat here
        before = dict(e.measurer.counts)
        trials = policy_trials(e, module, name, k, seed=5)
        assert [s for s, _ in trials] == list(dict.fromkeys(raw))[:k]
        # One compile and run each (the cache held only the baseline, which NT is).
        program = e.load(name)
        untransformed = sum(Schedule.parse(s).for_program(program).is_empty for s, _ in trials)
        assert e.measurer.counts["measured"] - before["measured"] == len(trials) - untransformed
        assert all(sp > 0 for _, sp in trials), trials  # each measured, correct
    finally:
        e.close()


def test_temperature_bench_samples_the_policy_hotter_on_training_programs_only(smoke_run, tmp_path):
    """bench/policy_temperature.py: the policy's best of k distinct schedules per temperature, on
    training programs; an eval-split name is refused."""
    out, r = smoke_run
    ckpt = sorted(os.path.join(root, d) for root, dirs, _ in os.walk(out / "results") for d in dirs
                  if d.startswith("checkpoint_"))[-1]
    cmd = [sys.executable, "bench/policy_temperature.py", "--checkpoint", ckpt, "--threads", "1", "--k", "3",
           "--temperatures", "1", "8", "--out", str(tmp_path / "t.json")]
    bad = subprocess.run(cmd + ["--only", "gpt_2_residual_add"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert bad.returncode == 1 and "no training benchmark named gpt_2_residual_add" in bad.stderr
    got = subprocess.run(cmd + ["--only", "resnet_18_layer1_residual_add"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert got.returncode == 0, got.stderr[-3000:]
    res = json.load(open(tmp_path / "t.json"))
    (row,) = res["rows"]
    for t in ("1.0", "8.0"):
        e = row["temperatures"][t]
        assert 1 <= e["distinct"] <= 3 and e["speedup"] > 0
    assert set(res["geomean"]) == {"1.0", "8.0"} and "T=8: best of 3 distinct" in got.stdout


def test_agent_pool_puts_the_policy_first_and_adds_only_new_random_schedules():
    from envs.mlir import Schedule
    from evaluate import agent_schedules
    a, b, c = (Schedule.parse(f"operation_0: {x}") for x in ("V", "NT", "V; operation_1: V"))
    got = agent_schedules([a, b], [Schedule.parse("operation_0: NT"), c, a])
    assert [str(s) for s in got] == [str(a), str(b), str(c)]
    assert agent_schedules([a], []) == [a]


def test_cost_model_bench_judges_a_policy_with_its_cost_model(smoke_run, tmp_path):
    """bench/cost_model.py's policy variants (the search settings of policy + cost model, chosen on
    held-out training programs): the policy's schedules ranked, and the policy's own best of k."""
    from evaluate import SAMPLE_TEMPERATURE
    out, r = smoke_run
    ckpt = sorted(os.path.join(root, d) for root, dirs, _ in os.walk(out / "results") for d in dirs
                  if d.startswith("checkpoint_"))[-1]
    from envs.cost_model import CostModel
    CostModel().save(str(tmp_path / "cm.pt"), threads=1)  # untrained: only the plumbing is tested here
    cmd = [sys.executable, "bench/cost_model.py", "--cost-model", str(tmp_path / "cm.pt"), "--only",
           "resnet_18_layer2_relu", "--variants", "policy:4:0:2", "agent:4:8+r1", "--budget", "2", "--random", "0",
           "--repeats", "1", "--threads", "1", "--out", str(tmp_path / "cm.json")]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "a policy variant needs --checkpoint" in bad.stderr
    over = [x if x != "agent:4:8+r1" else "agent:4:8+r3" for x in cmd]  # refine beyond the budget of 2
    bad = subprocess.run(over + ["--checkpoint", ckpt], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "--variants agent:4:8+r3: expected" in bad.stderr
    trained = [x if x != "resnet_18_layer2_relu" else "resnet_18_fc_batch_8" for x in cmd]  # in smoke.yaml
    bad = subprocess.run(trained + ["--checkpoint", ckpt], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "the policy trained on resnet_18_fc_batch_8" in bad.stderr
    r = subprocess.run(cmd + ["--checkpoint", ckpt], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(tmp_path / "cm.json"))
    assert res["methods"] == ["policy_model_2 pool 4 gen 0 T 2", f"agent_2 pool 4+8 T {SAMPLE_TEMPERATURE:g} refine 1", "policy_2"]
    assert res["checkpoint"] == ckpt
    row = res["rows"][0]["methods"]
    for m in res["methods"]:  # a winner re-measured ("": none beat the untransformed program)
        assert row[m]["speedup"] > 0 and row[m]["search_s"] > 0
        Schedule.parse(row[m]["schedule"] or "operation_0: NT")
    assert row["policy_2"]["schedule"]  # the policy's best episode, whatever its speed


def test_search_spaces_in_yaml_become_tune_spaces():
    import tune_run
    assert tune_run._search_space({"grid_search": [1e-3, 3e-4]}) == {"grid_search": [1e-3, 3e-4]}
    from ray.tune.search.sample import Categorical
    assert isinstance(tune_run._search_space({"choice": [0.0, 0.01]}), Categorical)
    assert tune_run._search_space(0.5) == 0.5


def test_validation_never_looks_at_the_eval_split_nor_at_trained_programs(tmp_path):
    import tune_run
    base = tune_run.load_config(os.path.join(ROOT, "tune_configs", "smoke.yaml"))
    for names, msg in ((["gpt_2_residual_add"], "eval split"), (["resnet_18_fc_batch_8"], "also trained on"),
                       (["no_such_program"], "no training program"),
                       (["bert_base_ffn_block"], "imported block, a row of the measuring stick")):
        cfg = dict(base, run=dict(base["run"], validate={"benchmarks": names}))
        with pytest.raises(tune_run.ConfigError, match=msg):
            tune_run.build_algo_config(cfg)
    cfg = dict(base, env=dict(base["env"], measure={"threads": 2}), resources=dict(base["resources"]))
    with pytest.raises(tune_run.ConfigError, match="must reserve the CPUs it times on"):
        tune_run.build_algo_config(cfg)
    # Without a list of programs the run trains on the whole split but the validation programs and
    # the imported blocks (stick rows).
    held = ["resnet_18_layer2_relu", "vgg_16_pool4_2x2_2"]
    cfg = dict(base, env={k: v for k, v in base["env"].items() if k != "benchmarks"},
               run=dict(base["run"], validate={"benchmarks": held}))
    trained = tune_run.env_config(cfg)["benchmarks"]
    assert len(trained) == 39 - 2 - 2 and not set(held) & set(trained)
    assert not {"resnet_18_layer1_basic_block", "bert_base_ffn_block"} & set(trained)


def test_env_runners_build_an_inference_only_module(env, observations):
    """What env runners build (inference_only): no value head and no value encoder, the same
    policy as the learner's module once it has the weights RLlib ships (its inference-only state)."""
    from ray.rllib.core.columns import Columns
    full = _module(env, model_type="lstm", encoder={"hidden": 32, "lstm_hidden": 32}, vf_share_encoder=False)
    torch.manual_seed(1)
    lite = MlirPolicyModule(observation_space=env.observation_space, action_space=env.action_space,
                            inference_only=True, model_config={"model_type": "lstm", "vf_share_encoder": False,
                                                               "encoder": {"hidden": 32, "lstm_hidden": 32},
                                                               "action_layout": env.action_layout_spec()})
    assert not hasattr(lite, "vf") and not hasattr(lite, "vf_encoder")
    counts = full.parameter_counts()
    assert lite.parameter_counts()["total"] == counts["total"] - counts["value_encoder"] - counts["value_head"]
    state = full.get_state(inference_only=True)
    assert not any(k.startswith(("vf.", "vf_encoder.")) for k in state)
    lite.set_state(state)
    batch = _batch(observations[:16])
    with torch.no_grad():
        a = full.forward_inference({Columns.OBS: batch["obs"]})[Columns.ACTION_DIST_INPUTS]
        b = lite.forward_inference({Columns.OBS: batch["obs"]})[Columns.ACTION_DIST_INPUTS]
    assert torch.equal(a, b)


def test_learners_and_fractional_gpus_in_the_resource_request():
    """num_learners > 0 makes learner processes, each reserving its GPU share (fractions allowed:
    two trials may share one GPU); num_learners 0 keeps one in the algorithm's process."""
    import yaml
    import tune_run
    with open(os.path.join(ROOT, "tune_configs", "smoke.yaml")) as f:
        base = yaml.safe_load(f)
    base["_path"] = "smoke.yaml"
    cfg = dict(base, resources=dict(base["resources"], num_learners=2, num_gpus_per_learner=0.5))
    config = tune_run.build_algo_config(cfg)
    assert config.num_learners == 2 and config.num_gpus_per_learner == 0.5
    assert tune_run._requested(config)["GPU"] == 1.0  # 2 x 0.5
    cfg = dict(base, resources=dict(base["resources"], num_learners=0, num_gpus_per_learner=0.25))
    assert tune_run._requested(tune_run.build_algo_config(cfg))["GPU"] == 0.25
    with pytest.raises(tune_run.ConfigError, match="num_learners"):
        tune_run.build_algo_config(dict(base, resources=dict(base["resources"], num_learners=-1)))


def test_env_runners_routed_by_a_custom_resource(tmp_path):
    """--env-runner-resources: each env runner reserves the resource (so only nodes that declare
    it, the cluster's CPU workers, host them); an embedded Ray, which never has it, is an error."""
    import tune_run
    assert tune_run._resources("rollout_slot=1, other=0.5") == {"rollout_slot": 1.0, "other": 0.5}
    assert tune_run._resources("") == {}
    with pytest.raises(tune_run.ConfigError, match="NAME=N"):
        tune_run._resources("rollout_slot=one")
    with open(os.path.join(ROOT, "tune_configs", "smoke.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["_path"] = "smoke.yaml"
    cfg["resources"].update(num_env_runners=3, custom_resources_per_env_runner={"rollout_slot": 1})
    assert tune_run._requested(tune_run.build_algo_config(cfg))["rollout_slot"] == 3
    env = dict(os.environ, RAY_TMPDIR=short_tmp(), MLIR_RL_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "tune_run.py", "--config", "tune_configs/smoke.yaml", "--results-dir",
                        str(tmp_path / "results"), "--env-runner-resources", "rollout_slot=1"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 2 and "'rollout_slot', which this machine does not have" in r.stderr, r.stderr[-2000:]


def test_headline_resources_fit_a_small_machine_with_two_learners(tmp_path):
    """A config written for the cluster (a GPU learner, 16 env runners) runs on this 2-CPU machine
    without flags: CPU learners, env runners capped, each change said in one line; and two learner
    processes (CPU, data-parallel) really train."""
    import yaml
    with open(os.path.join(ROOT, "tune_configs", "smoke.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["resources"].update(num_env_runners=16, num_gpus_per_learner=1, num_learners=2, num_cpus_per_learner=0.5)
    cfg["run"].update(stop_iters=1, name="fit")
    cfg["run"].pop("validate")
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, RAY_TMPDIR=short_tmp(), CUDA_VISIBLE_DEVICES="", MLIR_RL_CACHE=str(tmp_path / "cache"))
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "tune_run.py", "--config", str(path), "--results-dir", str(tmp_path / "res"),
                        "--no-eval"], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "this machine has 0 GPU(s), 2 asked for: the learners run on CPUs" in r.stdout
    assert "env runner(s) instead of 16" in r.stdout
    assert " iter   1 " in r.stdout


def test_a_gpu_that_does_not_exist_is_a_clear_error_at_once(tmp_path):
    env = dict(os.environ, RAY_TMPDIR=short_tmp(), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "tune_run.py", "--config", "tune_configs/smoke.yaml", "--gpus-per-learner",
                        "1", "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=env)
    assert r.returncode == 2
    assert "resources.num_gpus_per_learner = 1, but this machine has 0 GPU(s)" in r.stderr


def test_validation_metric_is_carried_between_validations():
    from rllib_models.callbacks import SchedulingMetrics
    cb = SchedulingMetrics()

    def result(it, scores):
        r = {"training_iteration": it, "env_runners": {"mlir": {"episodes": 1, "status": {"ok": 1}}}}
        if scores is not None:
            r["evaluation"] = {"env_runners": {"mlir": {"score": scores}}}
        return r

    r1 = result(1, None)
    cb.on_train_result(result=r1)
    assert "val_speedup_geomean" not in r1["mlir"]
    r2 = result(2, {"a": 4.0, "b": 0.1})  # b failed: scores x0.1
    cb.on_train_result(result=r2)
    assert r2["mlir"]["val_speedup_geomean"] == pytest.approx(math.sqrt(0.4))
    for it, scores in ((3, None), (4, {"a": float("nan"), "b": float("nan")})):  # no validation this iteration
        r = result(it, scores)
        cb.on_train_result(result=r)
        assert r["mlir"]["val_speedup_geomean"] == pytest.approx(math.sqrt(0.4)) and r["mlir"]["val_iteration"] == 2


def test_tune_keeps_the_best_checkpoints_by_validation(tmp_path):
    """Tune's checkpoint manager (what `num_to_keep` deletes) ranks by the validation metric:
    the best one survives later, worse ones (a nested key was never found there, and the
    latest three were kept instead)."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _TrainingResult
    from ray.tune import Checkpoint, CheckpointConfig
    from rllib_models.callbacks import VAL_METRIC, SchedulingMetrics
    cb = SchedulingMetrics()
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=VAL_METRIC,
                                                  checkpoint_score_order="max"))
    for it, score in enumerate([2.0, 9.0, 3.0, 4.0, 1.5], start=1):
        r = {"training_iteration": it, "env_runners": {"mlir": {"episodes": 1, "status": {"ok": 1}}},
             "evaluation": {"env_runners": {"mlir": {"score": {"a": score}}}}}
        cb.on_train_result(result=r)
        assert r[VAL_METRIC] == pytest.approx(score)
        d = tmp_path / f"checkpoint_{it}"
        d.mkdir()
        manager.register_checkpoint(_TrainingResult(checkpoint=Checkpoint.from_directory(str(d)), metrics=r))
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert "checkpoint_2" in kept  # the best (x9) is never deleted
    assert manager.best_checkpoint_result.metrics[VAL_METRIC] == pytest.approx(9.0)


def test_a_sweep_runs_trials_side_by_side_and_asha_stops_the_weak_ones(tmp_path):
    """tune_configs/sweep.yaml, shortened: 6 trials over lr, entropy and encoder width, two at
    a time on two CPUs, ASHA on the validation metric; the best checkpoint is chosen by it
    over every trial. Tune's storage (--storage-path) apart from the run's local files."""
    import glob
    with open(os.path.join(ROOT, "tune_configs", "sweep.yaml")) as f:
        cfg = yaml.safe_load(f)
    # sweep.yaml's run.seed: each trial draws its own seed from it (one seed for all started trials of
    # the same width from the same weights; their greedy validations tied and ASHA stopped none).
    cfg["run"].update(stop_iters=4, checkpoint_every=1, validate={**cfg["run"]["validate"], "every": 1},
                      scheduler={"type": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2},
                      # Six trials: untrained greedy policies often end every op at once (NT: exactly x1.0, a
                      # tie); ASHA stops a trial only when it arrives at a rung below earlier arrivals.
                      num_samples=6)
    cfg["env"]["benchmarks"] = cfg["env"]["benchmarks"][:2]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ray_tmp = short_tmp()
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, MLIR_RL_CACHE=str(tmp_path / "cache"))
    try:
        r = subprocess.run([sys.executable, "tune_run.py", "--config", str(path), "--results-dir",
                            str(tmp_path / "results"), "--storage-path", str(tmp_path / "storage"), "--no-eval"],
                           capture_output=True, text=True, timeout=900,
                           cwd=ROOT, env=env)
    finally:
        import shutil
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sweep: 6 sample(s) of the search space, AsyncHyperBandScheduler on val_speedup_geomean" in r.stdout
    trials = sorted(glob.glob(str(tmp_path / "storage" / "sweep" / "PPO_*")))
    assert len(trials) == 6
    assert os.path.exists(tmp_path / "results" / "sweep" / "env_config.json")
    configs = [json.load(open(os.path.join(t, "params.json"))) for t in trials]
    assert len({(c["lr"], c["entropy_coeff"], c["_model_config"]["encoder"]["hidden"],
                 c["_model_config"]["encoder"]["lstm_hidden"]) for c in configs}) == 6  # sampled, not one point
    assert len({c["seed"] for c in configs}) == 6  # each trial its own seed
    iters, vals = {}, {}
    for t in trials:
        rows = [json.loads(x) for x in open(os.path.join(t, "result.json"))]
        iters[t] = rows[-1]["training_iteration"]
        vals[os.path.basename(t)[:30]] = [round(x["val_speedup_geomean"], 3) for x in rows]
        assert all("val_speedup_geomean" in x for x in rows)  # validated every iteration
    assert max(iters.values()) == 4 and min(iters.values()) < 4, vals  # ASHA stopped some early
    best = r.stdout.split("best checkpoint (by val_speedup_geomean): ")[1].split()[0]
    scores = {}
    for t in trials:
        for x in open(os.path.join(t, "result.json")):
            row = json.loads(x)
            scores[(t, row["training_iteration"])] = row["val_speedup_geomean"]
    assert any(best.startswith(t) for t in trials)
    assert max(scores.values()) == pytest.approx(max(v for (t, _), v in scores.items() if best.startswith(t)))


def test_learner_bench_times_the_real_module_from_a_file_of_inputs(tmp_path):
    """bench/learner.py --write-inputs / --inputs: the GPU machine has no env or MLIR wheel, so the
    observations and module configs travel as a file; it must unpickle without the env's package and
    time the real MlirPolicyModule at each batch size."""
    import gzip
    import pickletools
    inputs, out = tmp_path / "inputs.gz", tmp_path / "learner.json"
    run = lambda *a: subprocess.run([sys.executable, os.path.join(ROOT, "bench", "learner.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, timeout=600)
    p = run("--write-inputs", str(inputs), "--batch", "8", "--models", "lstm", "distilbert-small")
    assert p.returncode == 0, p.stderr[-2000:]
    names = {str(arg) for op, arg, _ in pickletools.genops(gzip.open(inputs).read()) if isinstance(arg, str)}
    assert not any(n == "envs" or n.startswith("envs.") for n in names)
    p = run("--inputs", str(inputs), "--devices", "cpu", "--batch", "4", "8", "--models", "lstm", "distilbert-small",
            "--rounds", "1", "--steps", "1", "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(out.read_text())
    assert info["module"] == "MlirPolicyModule"
    got = {(r["model"], r["batch"]): r for r in info["rows"]}
    assert set(got) == {(m, b) for m in ("lstm", "distilbert-small") for b in (4, 8)}
    assert all(r["samples_per_s"] > 0 and r["device"] == "cpu" for r in got.values())
    assert got[("lstm", 8)]["total_params"] > got[("distilbert-small", 8)]["total_params"]  # 6.4M vs 2.3M
    p = run("--inputs", str(inputs), "--devices", "cpu", "--batch", "16", "--models", "lstm", "--out", str(out))
    assert p.returncode != 0 and "holds 8 observations" in p.stderr + p.stdout and str(inputs) in p.stderr + p.stdout
