"""Encoders, the masked hierarchical distribution, the RLModule, tune_run.py and evaluate.py."""
import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from envs import MlirScheduleEnv
from envs.action_space import POINTER_ID, TILING_IDS, UNROLL_ID
from rllib_models import ENCODERS, build_encoder
from rllib_models.distribution import FLOAT_MIN
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
    for name in env.names:
        for _ in range(2):
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
                            model_config=cfg)


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
    assert n >= 25 * len(observations) > 2000


def _check_masks(env, a, m):
    t = int(a[0])
    assert m["mask_transformation"][t] == 1
    if t in TILING_IDS:
        key = ("mask_T", "mask_TP", "mask_TF")[TILING_IDS.index(t)]
        tm = m[key].reshape(env.layout.L, env.layout.C)
        assert all(tm[d, c] for d, c in enumerate(a[1:1 + env.layout.L]))
    elif t == POINTER_ID:
        assert m["mask_I"][a[env.layout.pointer_index]] == 1
    elif t == UNROLL_ID:
        assert m["mask_U"][a[env.layout.unroll_index]] == 1
    else:
        assert not a[1:].any()  # unused heads are fixed to 0


def test_logp_entropy_and_kl_count_only_used_heads(env, observations):
    module = _module(env, model_type="lstm")
    obs = observations[:1]
    with torch.no_grad():
        logits = module.forward_inference(_batch(obs))["action_dist_inputs"]
    dist = module.get_inference_action_dist_cls().from_logits(logits)
    o = obs[0]
    t_logits = logits[0, :8]
    log_pt = torch.log_softmax(t_logits, -1)
    nt = int(np.flatnonzero(o["mask_transformation"])[0])  # e.g. NT: no heads
    a = torch.zeros(1, len(env.layout.nvec), dtype=torch.long)
    a[0, 0] = nt
    if nt not in TILING_IDS + (POINTER_ID, UNROLL_ID):
        assert dist.logp(a)[0] == pytest.approx(log_pt[nt].item(), abs=1e-5)
        a2 = a.clone()
        a2[0, 1:-1] = 3  # values in heads this transformation does not use: no effect
        a2[0, -1] = 2
        assert dist.logp(a2)[0] == pytest.approx(log_pt[nt].item(), abs=1e-5)
    # A masked transformation has log-probability -inf.
    masked = int(np.flatnonzero(o["mask_transformation"] == 0)[0])
    a[0, 0] = masked
    assert dist.logp(a)[0] == -math.inf
    # Entropy: H(t) + sum_t p(t) * mean entropy of t's open heads (hand-computed here).
    p = torch.softmax(t_logits, -1)
    h_t = -(p * torch.where(t_logits > FLOAT_MIN / 2, log_pt, torch.zeros_like(log_pt))).sum()
    L, C = env.layout.L, env.layout.C
    tiles = logits[0, 8:8 + 3 * L * C].reshape(3, L, C)
    cond = torch.zeros(8)
    for i, tt in enumerate(TILING_IDS):
        lp = torch.log_softmax(tiles[i], -1)
        h = -(lp.exp() * torch.where(tiles[i] > FLOAT_MIN / 2, lp, torch.zeros_like(lp))).sum(-1)
        opened = ((tiles[i] > FLOAT_MIN / 2).sum(-1) > 1).sum().clamp(min=1)
        cond[tt] = h.sum() / opened
    ptr = logits[0, 8 + 3 * L * C:8 + 3 * L * C + L]
    lp = torch.log_softmax(ptr, -1)
    cond[POINTER_ID] = -(lp.exp() * torch.where(ptr > FLOAT_MIN / 2, lp, torch.zeros_like(lp))).sum()
    un = logits[0, -3:]
    lp = torch.log_softmax(un, -1)
    cond[UNROLL_ID] = -(lp.exp() * torch.where(un > FLOAT_MIN / 2, lp, torch.zeros_like(lp))).sum()
    assert dist.entropy()[0].item() == pytest.approx((h_t + (p * cond).sum()).item(), rel=1e-5)
    assert torch.isfinite(dist.entropy()).all()
    assert dist.kl(dist)[0].item() == pytest.approx(0.0, abs=1e-6)
    det = dist.to_deterministic()
    assert torch.isfinite(det.logp(det.sample())).all()


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
    assert config.env_config["measure"]["threads"] == cfg["resources"]["num_cpus_per_env_runner"]
    assert config.lr == cfg["ppo"]["lr"]
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
    ckpts = [d for root, dirs, _ in os.walk(out / "results") for d in dirs if d.startswith("checkpoint_")]
    assert ckpts
    rows = list(csv.DictReader(open(out / "results" / "smoke" / "evaluation.csv")))
    assert rows and set(rows[0]) >= {"name", "schedule", "baseline_s", "scheduled_s", "speedup", "correct"}
    assert rows[0]["correct"] == "true"


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
    r = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", ckpt, "--mlir", str(mlir), "--samples", "1",
                        "--threads", "1", "--out", str(tmp_path / "one.csv"), "-o", str(tmp_path / "mm_out.mlir")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "one.csv").exists()
    bad = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "no RLModule checkpoint" in bad.stderr


def test_search_spaces_in_yaml_become_tune_spaces():
    import tune_run
    assert tune_run._search_space({"grid_search": [1e-3, 3e-4]}) == {"grid_search": [1e-3, 3e-4]}
    from ray.tune.search.sample import Categorical
    assert isinstance(tune_run._search_space({"choice": [0.0, 0.01]}), Categorical)
    assert tune_run._search_space(0.5) == 0.5


def test_a_gpu_that_does_not_exist_is_a_clear_error_at_once(tmp_path):
    env = dict(os.environ, RAY_TMPDIR=short_tmp(), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "tune_run.py", "--config", "tune_configs/smoke.yaml", "--gpus-per-learner",
                        "1", "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=env)
    assert r.returncode == 2
    assert "resources.num_gpus_per_learner = 1, but this machine has 0 GPU(s)" in r.stderr
