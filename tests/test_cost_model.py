"""The cost model on the time cache, ranked search, and episodes that measure nothing."""
import numpy as np
import pytest

from envs import MlirScheduleEnv, random_search, ranked_search, sample_schedules
from envs.cost_model import (CostModel, Record, learnable_rows, program_vectors, ranking_quality, stick_names,
                             training_records, vector_width)
from envs.mlir import ProgramState, Schedule

TRAINED = "resnet_18_fc_batch_8"        # a matmul 8 x 512 -> 1000
UNSEEN = "bert_base_attention_scores_q_kt"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = MlirScheduleEnv({"benchmarks": [TRAINED, UNSEEN],
                         "measure": {"threads": 2, "repetitions": 2, "warmup": 1,
                                     "cache_dir": str(tmp_path_factory.mktemp("cache"))}})
    yield e
    e.close()


def test_sampled_schedules_are_distinct_and_replay(env):
    program = env.load(UNSEEN)
    scheds = sample_schedules(env, UNSEEN, 40, seed=3)
    assert len(scheds) == len({str(s) for s in scheds}) >= 30
    for s in scheds:
        ProgramState.replay(program, s, env.cfg.actions)  # each one a valid episode
        m = program_vectors(CostModel().layout, program, s, env.cfg.actions)
        assert m.shape == (len(program.tags), vector_width(CostModel().layout))


def test_a_dry_episode_measures_nothing(env):
    obs, _ = env.reset(options={"benchmark": UNSEEN, "measure": False})  # the baseline still (the speedup's base)
    before = dict(env.measurer.counts)
    rng = np.random.default_rng(0)
    done, steps = False, 0
    while not done:
        obs, reward, done, _, info = env.step(env.sample_valid_action(obs, rng))
        steps += 1
        assert reward == 0.0
    assert info["status"] == "unmeasured" and info["speedup"] is None and steps >= 1
    Schedule.parse(info["schedule"])
    assert env.measurer.counts == before  # nothing compiled, nothing looked up
    obs, _ = env.reset(options={"benchmark": UNSEEN})  # the next episode measures again
    done = False
    while not done:
        obs, _, done, _, info = env.step(env.sample_valid_action(obs, rng))
    assert info["status"] != "unmeasured"


def test_the_measuring_stick_is_never_learned_from():
    names = {r["name"] for r in learnable_rows()}
    stick = set(stick_names())
    assert names and not names & stick
    assert "gpt_2_c_attn_projection" in stick and "bert_base_ffn_block" in stick
    from envs.mlir import Program
    from envs.suites import load_suite, suite_path
    eval_prog = {b.name: Program.from_text(b.mlir, b.name) for b in load_suite(suite_path("eval"))[:1]}
    with pytest.raises(ValueError, match="measuring stick"):
        training_records([], eval_prog, "fp", refuse=stick)


def test_learns_an_order_from_labels_and_ranks_an_unseen_program(env):
    """The learner alone, on labels made up for this test (a rule of the schedule, not measured):
    trained on one program's schedules, it orders another program's by the same rule."""
    def made_up(program, s):  # each op's time falls when it is vectorized and when it is parallel
        ps = ProgramState.replay(program, s, env.cfg.actions)
        st = [ps.states[t] for t in program.tags]
        return float(np.log(sum(np.exp(-2.0 * any(a.name in ("V", "R") for a in x.actions) - 0.7 * x.parallel)
                                for x in st)))

    train_p, test_p = env.load(TRAINED), env.load(UNSEEN)
    recs = [Record(TRAINED, str(s), made_up(train_p, s)) for s in sample_schedules(env, TRAINED, 200, seed=1)]
    model = CostModel()
    model.fit(recs, {TRAINED: train_p}, epochs=40, log=None)
    test = sample_schedules(env, UNSEEN, 100, seed=2)
    truth = np.array([made_up(test_p, s) for s in test])
    pred = model.predict(test_p, test)
    assert np.corrcoef(pred, truth)[0, 1] > 0.8


def test_trained_on_measured_times_and_ranked_search_measures_its_picks_in_order(env, tmp_path):
    random_search(env, TRAINED, budget=24, seed=0)  # real measurements, into the cache
    env.measurer.cache.flush()
    program = env.load(TRAINED)
    recs = training_records([env.measurer.cfg.cache_dir], {TRAINED: program}, env.measurer.fingerprint)
    assert len(recs) >= 20 and all(r.program == TRAINED for r in recs)
    model = CostModel()
    meta = model.fit(recs, {TRAINED: program}, epochs=60, log=None)
    assert meta["programs"] == [TRAINED] and meta["records"] == len(recs)
    # What it learned from, it orders (measured times: the slow untransformed ops are obvious).
    q = ranking_quality(model, recs, {TRAINED: program})
    assert q[TRAINED]["spearman"] > 0.5, q
    path = str(tmp_path / "cm.pt")
    model.save(path, threads=2)
    again = CostModel.load(path)
    assert again.learned_from([UNSEEN, TRAINED]) == [TRAINED]  # what vs_pytorch and bench/cost_model.py refuse
    test = sample_schedules(env, UNSEEN, 64, seed=5)
    assert np.allclose(again.predict(env.load(UNSEEN), test), model.predict(env.load(UNSEEN), test), atol=1e-5)
    r = ranked_search(env, UNSEEN, 3, again, pool=64, seed=5)
    assert r.measurements == len(r.trials) == 3
    pred = dict(zip(map(str, test), again.predict(env.load(UNSEEN), test)))
    picked = [pred[s] for s, _ in r.trials]
    assert picked == sorted(pred.values())[:3]  # the model's three best, best first
    assert r.best_so_far == sorted(r.best_so_far)
    with pytest.raises(FileNotFoundError, match="no cost model"):
        CostModel.load(str(tmp_path / "none.pt"))


def test_refine_climbs_from_the_fastest_measured_by_the_models_pick_of_its_mutations(env, monkeypatch):
    """ranked_search(refine=2): the model's best 2 first, then 2 measurements, each the model's pick
    among mutations of the fastest schedule measured before it. The model is trained on made-up
    labels (text length: only an order to follow); `mutate` and `predict` are wrapped (the real ones
    run) to see what each step mutated and ranked."""
    import envs.search as search
    program = env.load(UNSEEN)
    model = CostModel()
    model.fit([Record(UNSEEN, str(s), float(len(str(s)))) for s in sample_schedules(env, UNSEEN, 48, seed=8)],
              {UNSEEN: program}, epochs=5, log=None)
    real_mutate, real_predict, parents, ranked = search.mutate, model.predict, [], []

    def spy_mutate(e, p, s, rng):
        parents.append(str(s))
        return real_mutate(e, p, s, rng)

    def spy_predict(p, scheds):
        ranked.append([str(x) for x in scheds])
        return real_predict(p, scheds)

    monkeypatch.setattr(search, "mutate", spy_mutate)
    monkeypatch.setattr(model, "predict", spy_predict)
    r = ranked_search(env, UNSEEN, 4, model, pool=32, seed=6, refine=2, neighbours=12)
    texts = [t for t, _ in r.trials]
    assert r.measurements == 4 and len(set(texts)) == 4
    pool = ranked[0]  # the first ranking is the pool's
    scores = real_predict(program, [Schedule.parse(x) for x in pool])
    assert texts[:2] == [pool[i] for i in np.argsort(scores, kind="stable")[:2]]
    assert len(ranked) == 3
    fastest = [max(r.trials[:2 + k], key=lambda t: t[1])[0] for k in (0, 1)]  # the first of equals, as kept
    n0 = parents.index(fastest[1]) if fastest[1] != fastest[0] else len(parents) // 2
    assert parents[:n0] == [fastest[0]] * n0 and parents[n0:] == [fastest[1]] * (len(parents) - n0) and n0 > 0
    for k, kids in enumerate(ranked[1:]):  # refine step k measured trial 2 + k
        assert fastest[k] not in kids and not set(kids) & set(texts[:2 + k])
        kid_scores = real_predict(program, [Schedule.parse(x) for x in kids])
        assert texts[2 + k] == kids[int(np.argmin(kid_scores))]
    assert r.best_so_far == sorted(r.best_so_far)


def test_a_mutation_changes_one_op_and_keeps_the_others(env):
    from envs.search import mutate
    program = env.load("resnet_18_fc_batch_8")
    rng = np.random.default_rng(0)
    changed, one = 0, 0
    for s in sample_schedules(env, "resnet_18_fc_batch_8", 40, seed=4):
        kid = mutate(env, program, s, rng)
        ProgramState.replay(program, kid, env.cfg.actions)  # valid
        diff = [t for t in program.tags if kid.actions(t) != s.actions(t)]
        changed += bool(diff)
        one += len(diff) == 1
    assert changed >= 20 and one >= 0.8 * changed  # a mutation, mostly of one op only


def test_collect_and_train_from_the_command_line(tmp_path, capsys):
    from envs.cost_model import main
    from envs.mlir import Program
    from envs.mlir.cache import machine_fingerprint
    cache, name = str(tmp_path / "c"), "resnet_18_layer2_relu"
    with pytest.raises(SystemExit):
        main(["collect", "--only", "gpt_2_c_attn_projection", "--cache-dir", cache])  # eval split: refused
    assert "not among the training programs" in capsys.readouterr().err
    assert main(["collect", "--budget", "3", "--only", name, "--threads", "1", "--cache-dir", cache]) == 0
    assert f"[1/1] {name}" in capsys.readouterr().out
    row = next(r for r in learnable_rows() if r["name"] == name)
    recs = training_records([cache], {name: Program.from_text(row["mlir"], name)}, machine_fingerprint(1))
    assert 2 <= len(recs) <= 4  # the untransformed program and the distinct schedules measured
    with pytest.raises(ValueError, match="8 or more usable measurements"):  # too few to learn an order from
        main(["train", "--cache-dir", cache, "--threads", "1", "--out", str(tmp_path / "m.pt")])
