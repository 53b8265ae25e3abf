"""The gymnasium environment over real MLIR, and the search baselines."""
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import (RECHECK, EnvConfig, InvalidActionError, MlirScheduleEnv, greedy_search, random_search,
                  remeasured_best)
from envs.search import interleaved, timed_in_rounds
from envs.action_space import Pending
from envs.mlir import ACTIONS, MeasureConfig, Measurer, ProgramState, Schedule

# One small benchmark per family of the shipped training suite.
FAMILY_BENCHMARKS = [
    "resnet_18_layer2_conv_3x3_2",             # conv2d NHWC, stride 2
    "resnet_18_layer2_downsample_1x1_2",       # conv2d NCHW, 1x1 stride 2
    "resnet_50_layer2_3x3_bias_relu",          # conv + bias + relu (NCHW)
    "mobilenetv2_block2_depthwise_3x3_2",      # depthwise
    "resnet_18_maxpool_3x3_2",                 # max pooling
    "resnet_18_global_avgpool_7x7",            # average pooling
    "resnet_18_fc_batch_8",                    # matmul
    "bert_base_ffn_intermediate_bias_relu",    # matmul + bias + relu
    "bert_base_attention_scores_q_kt",         # batch matmul
    "resnet_18_layer1_residual_add",           # add
    "mobilenetv2_block2_relu6",                # relu6
    "resnet_18_layer1_basic_block",            # a whole block imported through torch-mlir
    "bert_base_ffn_block",                     # Linear-GELU-Linear imported through torch-mlir
]


def _cfg(tmp, **kw):
    base = {"measure": {"threads": 2, "repetitions": 2, "warmup": 1, "cache_dir": str(tmp)}}
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = MlirScheduleEnv(_cfg(tmp_path_factory.mktemp("cache"), benchmarks=FAMILY_BENCHMARKS))
    yield e
    e.close()


def test_registered_and_passes_gymnasium_checker(tmp_path):
    assert envs.ENV_ID in gym.registry and gym.registry[envs.ENV_ID].nondeterministic
    e = gym.make(envs.ENV_ID, config=_cfg(tmp_path, benchmarks=["resnet_18_layer1_residual_add",
                                                                 "bert_base_attention_scores_q_kt"]))
    check_env(e.unwrapped)
    e.close()


def test_observation_layout(env):
    obs, info = env.reset(options={"benchmark": "resnet_18_fc_batch_8"})
    assert env.observation_space.contains(obs)
    L, C = env.cfg.features.max_loops, len(env.cfg.actions.tile_choices)
    nvec = list(env.action_space.nvec)
    assert nvec[0] == len(ACTIONS) and nvec[1:1 + L] == [C] * L  # transformation, then the tile slot
    assert env.layout.slots["tile"] == slice(1, 1 + L) and nvec[env.layout.slots["pointer"].start] == L
    assert nvec[env.layout.slots["unroll"].start] == 3 and len(nvec) == 1 + sum(
        sl.stop - sl.start for sl in env.layout.slots.values())
    assert obs["op_features"].shape == (env.features.op_size,)
    assert obs["mask_T"].shape == (L * C,) and obs["mask_I"].shape == (L,)
    assert info["op"] == "operation_1" and info["status"] == "pending"  # the matmul: last op first
    tm = obs["mask_T"].reshape(L, C)
    assert tm[3:].sum(axis=1).tolist() == [1] * (L - 3) and tm[3:, 0].all()  # absent loops: untiled only
    assert tm[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]  # m = 8: sizes 1..8


@pytest.mark.parametrize("name", FAMILY_BENCHMARKS)
def test_random_episode_on_each_family_is_measured_and_checked(env, name):
    rng = np.random.default_rng(7)
    obs, _ = env.reset(options={"benchmark": name})
    done, steps, total = False, 0, 0.0
    while not done:
        obs, r, done, trunc, info = env.step(env.sample_valid_action(obs, rng))
        assert not trunc and env.observation_space.contains(obs)
        total += r
        steps += 1
    assert info["status"] == "ok", info["message"]  # "ok" is only given to a checked, correct result
    assert total == pytest.approx(math.log(info["speedup"]))
    # One step at least per op, but for fills R computed in its kernels (they take none).
    assert steps >= sum(1 for s in env.ps.states.values() if not s.fused_into)


def test_reward_of_a_known_schedule(env):
    name = "resnet_18_fc_batch_8"
    text = "operation_1: I(0,2,1) T(4,0,64) T(0,16,1) U(4) V; operation_0: T(1,16) V"
    obs, _ = env.reset(options={"benchmark": name})
    for tag in ("operation_1", "operation_0"):
        for a in Schedule.parse(text).actions(tag):
            for vec in env.layout.encode(a, env.ps.current):
                obs, r, done, _, info = env.step(vec)
    assert done and info["status"] == "ok"
    assert info["schedule"] == "operation_0: T(1,16) V; operation_1: I(0,2,1) T(4,0,64) T(0,16,1) U(4) V"
    assert r == pytest.approx(math.log(info["baseline_s"] / info["time_s"]))
    # The same schedule measured directly gives the same (cached) time.
    m = env.measurer.measure(env.load(name), Schedule.parse(text))
    assert m.cache_hit and m.time_s == info["time_s"] and info["speedup"] > 1


def test_per_op_rewards_sum_to_the_final_log_speedup(tmp_path):
    e = MlirScheduleEnv(_cfg(tmp_path, reward="per_op", benchmarks=["resnet_50_layer2_3x3_bias_relu"]))
    obs, _ = e.reset(seed=0)
    rng = np.random.default_rng(3)
    rewards, measured = [], 0
    done = False
    while not done:
        obs, r, done, _, info = e.step(e.sample_valid_action(obs, rng))
        rewards.append(r)
        measured += info["status"] != "pending"
    e.close()
    assert measured == 3  # one measurement per finished op
    assert info["status"] == "ok" and sum(rewards) == pytest.approx(math.log(info["speedup"]))


def test_failures_are_penalized_and_told_apart(tmp_path):
    name = "bert_base_ffn_output"
    # The baseline and its reference are measured once with a generous limit and
    # land in the cache; the env then runs with a run limit too short for a slow schedule.
    cfg = _cfg(tmp_path, benchmarks=[name], penalties={"timeout": -5.0})
    from envs.mlir import MeasureConfig, Measurer
    with Measurer(MeasureConfig(**cfg["measure"])) as m:
        assert m.baseline(MlirScheduleEnv(cfg).load(name)).ok
    cfg["measure"]["run_timeout_s"] = 0.05
    e = MlirScheduleEnv(cfg)
    obs, info = e.reset(seed=0)
    assert info["baseline_s"] > 0
    # Scalar 1x1x1 tiles of an 8x768x3072 matmul: far slower than the limit.
    actions = Schedule.parse("operation_1: T(1,1,1)").actions("operation_1") + (envs.mlir.NT(),) * 2
    for a in actions:
        obs, r, done, _, info = e.step(e.layout.encode(a, e.ps.current)[0])
    e.close()
    assert done and info["status"] == "timeout" and r == -5.0 and info["speedup"] is None
    assert "running took longer than 0.05 s" in info["message"]


def test_masks_only_allow_valid_actions(env):
    """At a few states, every unmasked choice of every head decodes and applies."""
    rng = np.random.default_rng(11)
    lay = env.layout
    for name in ("resnet_18_layer2_conv_3x3_2", "bert_base_attention_scores_q_kt", "resnet_18_maxpool_3x3_2"):
        obs, _ = env.reset(options={"benchmark": name})
        for _ in range(4):
            s = env.ps.current
            masks = {k: obs[k] for k in lay.mask_sizes()}
            for k in np.flatnonzero(obs["mask_transformation"]):
                refs = lay.by_class.get(ACTIONS[k], [])
                base = np.zeros(len(lay.nvec), np.int64)
                base[0] = k
                for r in refs:  # every other position at its first allowed choice
                    hm = masks[r.mask].reshape(r.head.positions, r.head.choices)
                    base[r.offset:r.offset + r.head.positions] = hm.argmax(-1)
                vecs = [base]
                for r in refs:
                    hm = masks[r.mask].reshape(r.head.positions, r.head.choices)
                    for p in range(r.head.positions):
                        for c in np.flatnonzero(hm[p]):
                            v = base.copy()
                            v[r.offset + p] = c
                            vecs.append(v)
                for v in vecs:
                    a = lay.decode(v, masks, s)
                    if not isinstance(a, Pending):
                        env.ps.copy().step(a)  # raises ScheduleError if a mask allowed an invalid action
            obs, _, done, _, _ = env.step(env.sample_valid_action(obs, rng))
            if done:
                break


def test_masked_action_is_a_clear_error(env):
    obs, _ = env.reset(options={"benchmark": "resnet_18_global_avgpool_7x7"})
    assert not obs["mask_transformation"][ACTIONS.index(envs.mlir.U)]
    vec = np.zeros(len(env.layout.nvec), np.int64)
    vec[0] = ACTIONS.index(envs.mlir.U)
    with pytest.raises(InvalidActionError, match="transformation U is masked"):
        env.step(vec)
    vec[0] = ACTIONS.index(envs.mlir.T)
    vec[1] = len(env.cfg.actions.tile_choices) - 1  # 64 on a loop of bound 1
    with pytest.raises(InvalidActionError, match="tile head 0"):
        env.step(vec)


def test_cycle_benchmarks_takes_each_in_turn(tmp_path):
    names = ["resnet_18_layer1_residual_add", "resnet_18_fc_batch_8", "bert_base_ffn_relu"]
    e = MlirScheduleEnv(_cfg(tmp_path, benchmarks=names, cycle_benchmarks=True))
    picks = [e.reset(seed=3)[1]["benchmark"] for _ in range(6)]
    e.close()
    assert picks == sorted(names) * 2


def test_seeded_reset_is_reproducible(env):
    picks = [env.reset(seed=s)[1]["benchmark"] for s in (1, 2, 3, 1, 2, 3)]
    assert picks[:3] == picks[3:]
    o1, _ = env.reset(seed=5)
    o2, _ = env.reset(seed=5)
    for k in o1:
        np.testing.assert_array_equal(o1[k], o2[k])
    assert env.action_space.sample() is not None


def test_bad_settings_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="env.reward"):
        EnvConfig.coerce({"reward": "best"})
    with pytest.raises(ValueError, match="env.penalties"):
        EnvConfig.coerce({"penalties": {"segfault": -1}})
    with pytest.raises(ValueError, match="env.measure.threads"):
        EnvConfig.coerce({"measure": {"threads": 0}})
    with pytest.raises(ValueError, match="env.actions.colour"):
        EnvConfig.coerce({"actions": {"colour": 1}})
    with pytest.raises(ValueError, match="no benchmark named nope"):
        MlirScheduleEnv(_cfg(tmp_path, benchmarks=["nope"]))
    with pytest.raises(ValueError, match="no such suite file"):
        MlirScheduleEnv(_cfg(tmp_path, suite=str(tmp_path / "none.parquet")))


def test_random_search_measures_each_schedule_once(tmp_path):
    """Uniform episodes of a small program repeat; random search's budget is spent on distinct ones."""
    name = "resnet_18_layer1_residual_add"
    e = MlirScheduleEnv(_cfg(tmp_path, benchmarks=[name]))
    try:
        program, rng, raw = e.load(name), np.random.default_rng(0), []
        for _ in range(24):
            ps = ProgramState(program, e.cfg.actions)
            while not ps.done:
                for a in e.layout.sample_actions(ps, rng):
                    ps.step(a)
            raw.append(str(ps.schedule()))
        assert len(set(raw)) < len(raw)
        e.measurer.baseline(program)
        before = dict(e.measurer.counts)
        r = random_search(e, name, budget=24, seed=0)
        assert r.measurements == len({s for s, _ in r.trials}) == 24
        # Each compiled and run once; the cache answers only the baseline (and NT, which is the baseline).
        untransformed = sum(Schedule.parse(s).for_program(program).is_empty for s, _ in r.trials)
        assert e.measurer.counts["measured"] - before["measured"] == 24 - untransformed
        assert e.measurer.counts["cache_hits"] - before["cache_hits"] == 1 + untransformed
    finally:
        e.close()


def test_search_baselines_spend_their_budget_and_find_faster_code(env):
    name = "bert_base_attention_scores_q_kt"
    r = random_search(env, name, budget=8, seed=0)
    g = greedy_search(env, name, budget=6, seed=0)
    for res, budget in ((r, 8), (g, 6)):
        assert res.measurements == len(res.best_so_far) == budget
        assert res.best_so_far == sorted(res.best_so_far) and res.best_so_far[-1] == res.speedup
        # Naive loops of a batch matmul: some measured schedule is clearly faster, and
        # its speedup holds when measured again (a broken pipeline fails or stays at 1.0).
        assert res.schedule and res.speedup > 1.5, (res.schedule, res.speedup)
        with Measurer(MeasureConfig(threads=2, repetitions=2)) as fresh:  # no cache: really measured again
            program = env.load(name)
            again = fresh.evaluate(program, Schedule.parse(res.schedule))
            assert again.measurement.status == "ok" and again.speedup > 1.5
            # The best few by search time, fastest first, measured again: one of them, correct and fast.
            top, seen = res.top_of(budget), dict(res.trials)
            assert top[0] == res.schedule and len(set(top)) == len(top) <= RECHECK
            assert [seen[s] for s in top] == sorted((seen[s] for s in top), reverse=True)
            chosen, m = remeasured_best(fresh, program, top)
            assert chosen in top and m.ok and again.baseline.time_s / m.time_s > 1.5
            chosen, m = remeasured_best(fresh, program, [])  # none beat the untransformed program
            assert chosen == "" and m.ok and m.schedule == str(Schedule.empty(program))
            runs = interleaved(fresh, program, {"untransformed": "", "pick": chosen or top[0]}, 2)
            assert [len(v) for v in runs.values()] == [2, 2] and all(x.ok for v in runs.values() for x in v)
            assert np.median([x.time_s for x in runs["untransformed"]]) > 1.5 * np.median(
                [x.time_s for x in runs["pick"]])


def test_remeasured_best_keeps_the_fastest_correct_and_interleaved_times_picks_in_turn():
    """`remeasured_best`'s choice, `interleaved`'s order and `timed_in_rounds`' medians, with a stand-in for the Measurer (their real
    measurements are tested above)."""
    from types import SimpleNamespace as NS
    program = None  # only passed through to the stand-in

    class FakeMeasurer:  # a fake inside this unit test only: fixed times per schedule
        def __init__(self, times):
            self.times, self.asked = times, []

        def measure(self, program, schedule):
            text = str(schedule)
            self.asked.append(text)
            t = self.times[text]
            return NS(ok=t is not None, time_s=t, status="ok" if t else "wrong_result", schedule=text)

    a, b, c = "operation_1: V", "operation_1: R(1,16,1)", "operation_1: R(2,16,1)"
    f = FakeMeasurer({a: 3e-3, b: 1e-3, c: None})
    assert remeasured_best(f, program, [c, a, b])[0] == b  # the fastest correct, not the first
    assert f.asked == [c, a, b]  # each measured once
    chosen, m = remeasured_best(FakeMeasurer({c: None}), program, [c])
    assert chosen == c and m.status == "wrong_result"  # a failure now is reported, not hidden
    f = FakeMeasurer({a: 3e-3, b: 1e-3})
    runs = interleaved(f, program, {"x": a, "y": b}, 3)
    assert f.asked == [a, b] * 3 and [m.time_s for m in runs["y"]] == [1e-3] * 3  # every label once per round

    # timed_in_rounds: each pick's median over the rounds; a failure in any round, or in the pick's own
    # re-measure (then it is not timed again), is its result.  Real Measurement records from the stand-in.
    import datetime
    from envs.mlir.cache import Measurement

    class RoundsMeasurer:  # a fake inside this unit test only: the next time of each schedule per call
        def __init__(self, times):
            self.times, self.asked = times, []

        def measure(self, program, schedule):
            self.asked.append(str(schedule))
            t = self.times[str(schedule)].pop(0)
            return Measurement("h", str(schedule), "fp", "ok" if t else "timeout", t, 0.1, "",
                               datetime.datetime.now())

    pick = lambda s, t: (s, Measurement("h", s, "fp", "ok" if t else "wrong_result", t, 0.1, "", datetime.datetime.now()))
    f = RoundsMeasurer({a: [5e-3, 1e-3, 2e-3], b: [1e-3, None, 1e-3]})
    timed = timed_in_rounds(f, program, {"x": pick(a, 9e-3), "y": pick(b, 1e-3), "z": pick(c, None)}, 3)
    assert f.asked == [a, b] * 3  # the failed pick is not timed again
    assert timed["x"].ok and timed["x"].time_s == 2e-3 and timed["x"].schedule == a  # the median, not its 9 ms
    assert timed["y"].status == "timeout" and timed["z"].status == "wrong_result"
    # remeasured_best in rounds: the fastest median, not the luckiest single run; one failed round rules out.
    f = RoundsMeasurer({a: [1e-3, 5e-3, 5e-3], b: [2e-3, 2e-3, 2e-3], c: [1e-4, None, 1e-4]})
    chosen, m = remeasured_best(f, program, [a, b, c], rounds=3)
    assert f.asked == [a, b, c] * 3 and chosen == b and m.time_s == 2e-3


@pytest.mark.parametrize("split", ["train", "eval"])
def test_random_masked_episodes_on_every_benchmark_are_correct(tmp_path, split):
    """One random valid episode per benchmark of each shipped suite: whatever the
    masks allow transforms, compiles, runs and computes the right result."""
    e = MlirScheduleEnv({"split": split, "measure": {"threads": 2, "repetitions": 1, "warmup": 0,
                                                     "cache_dir": str(tmp_path)}})
    rng = np.random.default_rng(2024)
    failures = []
    for name in e.names:
        obs, _ = e.reset(options={"benchmark": name})
        done = False
        while not done:
            obs, _, done, _, info = e.step(e.sample_valid_action(obs, rng))
        if info["status"] != "ok":
            failures.append(f"{name}: {info['status']}: {info['message']} [{info['schedule']}]")
    e.close()
    assert not failures, "\n".join(failures)
