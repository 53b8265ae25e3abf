"""The shipped suites and the suite builder."""
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.mlir import Program
from envs.suites import COLUMNS, SuiteError, load_suite, matched_holdout, suite_path, write_suite

from conftest import MATMUL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = {"matmul", "batch_matmul", "conv2d", "depthwise_conv", "maxpool", "avgpool", "add", "relu",
            "matmul_bias_relu", "conv_bias_relu"}
MODELS = {"ResNet-18", "ResNet-50", "VGG-16", "MobileNetV2", "BERT-base", "GPT-2"}


@pytest.fixture(scope="module")
def suites():
    return {s: load_suite(suite_path(s)) for s in ("train", "eval")}


def test_columns_and_rows(suites):
    for split, rows in suites.items():
        assert tuple(pq.read_schema(suite_path(split)).names) == COLUMNS
        assert len({b.name for b in rows}) == len(rows)
        for b in rows:
            assert b.split == split and b.flops > 0 and b.bytes > 0 and b.layer and b.source_model in MODELS
            assert "layer" in b.shape or "input_shape" in b.shape
    train = suites["train"]
    assert FAMILIES <= {b.family for b in train}
    assert {"imported_resnet_block", "imported_mlp_block"} <= {b.family for b in train}
    assert "imported_attention_block" in {b.family for b in suites["eval"]}


def test_splits_are_disjoint_and_eval_has_an_unseen_model(suites):
    train, ev = suites["train"], suites["eval"]
    assert not {b.mlir for b in train} & {b.mlir for b in ev}
    assert not {b.name for b in train} & {b.name for b in ev}
    only_eval = {b.source_model for b in ev} - {b.source_model for b in train}
    assert "GPT-2" in only_eval
    assert {b.source_model for b in train} | {b.source_model for b in ev} == MODELS


def test_every_benchmark_parses_and_is_small(suites):
    for rows in suites.values():
        for b in rows:
            p = Program.from_text(b.mlir, b.name)
            assert p.ops
            # The FLOP budget that keeps the untransformed program well under 0.5 s here.
            assert b.flops <= 64e6 or b.family.startswith("imported")
    # The scaled shape is recorded beside the layer's own.
    conv = next(b for b in suites["train"] if b.name == "resnet_18_layer1_conv_3x3")
    assert conv.shape["layer"]["h"] == 58 and conv.shape["scaled"]["h"] < 58


def test_validation_programs_are_matched_to_the_trained_ones_without_the_stick(suites):
    """The validation rule (run.validate): per trained program, the held-out one of its family with
    the most window traits in common; never a trained program or an imported block."""
    train = suites["train"]
    by = {b.name: b for b in train}
    # A strided NHWC 3x3 conv finds the other strided NHWC 3x3 (ResNet-50's), not a stride-1 one
    # of its own model; a matmul + bias + ReLU finds the only other one.
    assert matched_holdout(["resnet_18_layer2_conv_3x3_2"], train) == ["resnet_50_layer4_3x3_2"]
    assert matched_holdout(["bert_base_ffn_intermediate_bias_relu"], train) == ["vgg_16_fc6_bias_relu_batch_8"]
    # Trained programs are never chosen; two trained ones that match the same program name it once.
    got = matched_holdout(["resnet_18_layer2_conv_3x3_2", "resnet_50_layer4_3x3_2"], train)
    assert got == ["resnet_18_conv1_7x7_2"]  # stride 2 and NHWC for both: their one best match
    both = ["mobilenetv2_block2_depthwise_3x3_2", "mobilenetv2_block2_depthwise_3x3_2"]
    assert matched_holdout(both, train) == ["mobilenetv2_block1_depthwise_3x3"]
    # An imported block has no validation twin (its family's only other rows are stick rows).
    assert matched_holdout(["resnet_18_layer1_basic_block"], train) == []
    trained = [b.name for b in train if not b.family.startswith("imported_")][::3]
    for n in matched_holdout(trained, train):
        assert n not in trained and not by[n].family.startswith("imported_")
    with pytest.raises(SuiteError, match="no_such"):
        matched_holdout(["no_such"], train)
    # The shipped run configs validate on exactly what the rule picks for the main job's programs.
    import yaml
    lstm = yaml.safe_load(open(os.path.join(ROOT, "tune_configs", "lstm.yaml")))
    want = matched_holdout(lstm["env"]["benchmarks"], train)
    assert len(want) == 8
    for name in ("lstm", "lstm_long", "distilbert_small"):
        cfg = yaml.safe_load(open(os.path.join(ROOT, "tune_configs", f"{name}.yaml")))
        assert cfg["run"]["validate"]["benchmarks"] == want, name
    out = subprocess.run([sys.executable, "-m", "envs.suites", "holdout", *lstm["env"]["benchmarks"]],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and f"benchmarks: [{', '.join(want)}]" in out.stdout
    out = subprocess.run([sys.executable, "-m", "envs.suites", "holdout", "no_such"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "train.parquet: no benchmark named no_such" in out.stderr


def test_suite_from_a_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mm.mlir").write_text(MATMUL)
    (folder / "broken.mlir").write_text("func.func @f(%a: tensor<?xf32>) -> tensor<?xf32> {\n  return %a : tensor<?xf32>\n}\n")
    (folder / "notes.txt").write_text("not a program")
    out = tmp_path / "mine.parquet"
    r = subprocess.run([sys.executable, "-m", "envs.suites", "from-folder", str(folder), "-o", str(out),
                        "--check-time", "--threads", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "skipped:" in r.stderr and "broken.mlir:1: " in r.stderr and "dynamic shape" in r.stderr
    rows = load_suite(str(out))
    assert [b.name for b in rows] == ["mm"]
    assert rows[0].family == "user" and rows[0].source_model == "mine" and rows[0].mlir == MATMUL
    assert rows[0].flops == 2 * 24 * 40 * 32 + 24 * 40 and rows[0].bytes == 4 * (24 * 32 + 32 * 40 + 24 * 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "envs.suites", "from-folder", str(empty), "-o", str(tmp_path / "x.parquet")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "no usable .mlir file" in r.stderr


def test_build_is_deterministic_and_respects_the_budget(tmp_path):
    from envs.suites.__main__ import build_rows
    a = build_rows(16_000_000, 1 << 18, with_imports=False)
    b = build_rows(16_000_000, 1 << 18, with_imports=False)
    assert [r["mlir"] for r in a] == [r["mlir"] for r in b]
    assert all(r["flops"] <= 16_000_000 for r in a)
    write_suite(a, str(tmp_path / "s.parquet"))
    assert len(load_suite(str(tmp_path / "s.parquet"))) == len(a)


def test_bad_suite_files_are_clear_errors(tmp_path):
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite(str(tmp_path / "none.parquet"))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"name": ["x"]}), bad)
    with pytest.raises(SuiteError, match="missing column"):
        load_suite(str(bad))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"junk")
    with pytest.raises(SuiteError, match="not a readable Parquet file"):
        load_suite(str(junk))


def test_torch_twins_compute_what_our_programs_compute():
    """Every eval benchmark and imported block has a PyTorch twin (what bench/vs_pytorch.py
    compares with) that gives our untransformed program's result on the same inputs."""
    import numpy as np
    import pyarrow.parquet as pq
    from envs.mlir import MeasureConfig, Measurer, Program
    from envs.mlir.compile import make_inputs
    from envs.suites import suite_path
    from envs.suites.models import LAYERS
    from envs.suites.torch_twins import FAMILY_GEN, run_twin, torch_twin
    assert {layer.family: layer.gen for layer in LAYERS} == {f: g for f, g in FAMILY_GEN.items()
                                                              if f in {layer.family for layer in LAYERS}}
    rows = pq.read_table(suite_path("eval")).to_pylist()
    rows += [r for r in pq.read_table(suite_path("train")).to_pylist() if r["family"].startswith("imported_")]
    with Measurer(MeasureConfig(threads=2, repetitions=1)) as m:
        for row in rows:
            p = Program.from_text(row["mlir"], row["name"])
            ref = m._reference(p)
            out = run_twin(torch_twin(row, make_inputs(p.inputs, m.cfg.seed)))
            assert [o.shape for o in out] == [r.shape for r in ref], row["name"]
            for o, r in zip(out, ref):
                np.testing.assert_allclose(o, r, rtol=1e-3, atol=1e-3 * float(np.abs(r).max()), err_msg=row["name"])


def test_the_stick_summarizes_the_eval_split_apart_from_the_training_splits_blocks():
    """Issue 9's targets are on the eval split; the stick also times the training split's imported
    blocks (rows made up here: only the grouping is tested)."""
    from bench.vs_pytorch import COMPUTE_BOUND, _summary
    from envs.suites import measuring_stick_rows
    from rllib_models.callbacks import geomean
    stick = measuring_stick_rows()
    rows = [dict(name=r["name"], family=r["family"],
                 methods={"m": {"vs_torch": 2.0 if r["split"] == "eval" else 0.5, "peak_fraction": 0.1}})
            for r in stick]
    s = _summary(rows, ["m"], geomean)
    n_eval = sum(r["split"] == "eval" for r in stick)
    assert 0 < n_eval < len(stick) and s["overall"]["benchmarks"] == len(stick)
    assert s["eval split"]["benchmarks"] == n_eval and s["eval split"]["m"]["vs_torch"] == pytest.approx(2.0)
    assert s["overall"]["m"]["vs_torch"] < 2.0
    assert s["compute-bound"]["benchmarks"] == sum(r["family"] in COMPUTE_BOUND for r in stick)
    only_eval = [x for x, r in zip(rows, stick) if r["split"] == "eval"]
    assert "eval split" not in _summary(only_eval, ["m"], geomean)  # the same as overall: not repeated


def test_the_stick_keeps_every_measured_row_and_resumes_a_stopped_run(tmp_path):
    """bench/vs_pytorch.py writes its JSON after each benchmark: a run killed during the second
    keeps the first, `--resume` measures only the second, and other settings are refused with the
    file untouched (real compilation and timing of two small eval rows, budget 2)."""
    import json
    import signal
    import time
    out = tmp_path / "stick.json"
    cmd = [sys.executable, os.path.join(ROOT, "bench", "vs_pytorch.py"), "--only", "mobilenetv2_global_avgpool_7x7",
           "mobilenetv2_block6_relu6", "--budget", "2", "--no-greedy", "--rounds", "1", "--out", str(out),
           "--cache-dir", str(tmp_path / "cache")]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not out.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the stick and its measuring workers
        p.wait()
    first = json.loads(out.read_text())
    assert first["complete"] is False and [r["name"] for r in first["rows"]] == ["mobilenetv2_block6_relu6"]
    assert not (tmp_path / "stick.json.tmp").exists()
    r = subprocess.run([sys.executable, cmd[1], "--replot", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "partial: 1 benchmark(s)" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 benchmark(s) kept, 1 to measure" in r.stdout
    done = json.loads(out.read_text())
    assert done["complete"] is True and [x["name"] for x in done["rows"]] == [
        "mobilenetv2_block6_relu6", "mobilenetv2_global_avgpool_7x7"]  # the suite's order
    assert done["fma_peak"] == first["fma_peak"]  # one peak for every row's fraction
    kept, again = first["rows"][0]["methods"], done["rows"][0]["methods"]
    for m in ("untransformed", "random_2"):  # not measured again (the ratio may shrink: PyTorch re-timed at the end)
        assert (again[m]["schedule"], again[m]["time_s"]) == (kept[m]["schedule"], kept[m]["time_s"])
    assert [len(c) for c in done["curves"].values()] == [2]
    before = out.read_bytes()
    r = subprocess.run([a if a != "2" else "3" for a in cmd] + ["--resume"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "other settings" in r.stderr and "budget: 2 there, 3 now" in r.stderr
    assert out.read_bytes() == before
    from bench.vs_pytorch import _keep_previous  # what a new run (no --resume) does first with an old result
    assert _keep_previous(str(out)) == str(tmp_path / "stick.previous.json")
    assert not out.exists() and (tmp_path / "stick.previous.json").read_bytes() == before
