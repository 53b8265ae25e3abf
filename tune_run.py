"""Train a scheduling policy with RLlib PPO through Ray Tune.

    python tune_run.py --model lstm                      # embedded local Ray, tune_configs/lstm.yaml
    python tune_run.py --model distilbert --address auto # join a running cluster
    python tune_run.py --config tune_configs/smoke.yaml  # a 3-minute smoke run
    python tune_run.py --model lstm --resume             # continue a killed run from its last checkpoint
    python tune_run.py --model distilbert --dry-run      # build everything, print sizes and resources, exit

Every setting lives in the YAML file (sections model, env, ppo, resources, run);
flags override a few. A value in `ppo` may be a Tune search space:
``{grid_search: [1e-3, 3e-4]}`` or ``{choice: [0.0, 0.01]}``.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import yaml

ROOT = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("model", "env", "ppo", "resources", "run")


class ConfigError(ValueError):
    """A run configuration that cannot be used, naming the file and setting."""


def load_config(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    unknown = [k for k in cfg if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")
    for s in SECTIONS:
        cfg.setdefault(s, {})
        if not isinstance(cfg[s], dict):
            raise ConfigError(f"{path}: section {s!r} must be a mapping")
    cfg["_path"] = path
    return cfg


SPACES = ("grid_search", "choice", "loguniform", "uniform", "randint")


def _is_space(value) -> bool:
    """A YAML search space: a mapping of exactly one of SPACES."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACES


def _search_space(value):
    """YAML {grid_search: [...]} / {choice: [...]} / {loguniform: [lo, hi]} / {uniform: [lo, hi]} /
    {randint: [lo, hi]} -> Tune search spaces, in nested mappings too (the model section's encoder)."""
    from ray import tune
    if _is_space(value):
        (k, v), = value.items()
        if k == "grid_search":
            return tune.grid_search(list(v))
        if k == "choice":
            return tune.choice(list(v))
        lo, hi = v
        return {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[k](lo, hi)
    if isinstance(value, dict):
        return {k: _search_space(v) for k, v in value.items()}
    return value


def one_trial(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The configuration with every search space at its first value: what a dry run builds
    and what resources are fitted with (RLlib validates values; the spaces are Tune's)."""
    return {**cfg, "model": _first(cfg["model"]), "ppo": _first(cfg["ppo"])}


def _first(value):
    """A search space's first (or lowest) value."""
    if _is_space(value):
        return list(next(iter(value.values())))[0]
    if isinstance(value, dict):
        return {k: _first(v) for k, v in value.items()}
    return value


def timing_threads(cfg: Dict[str, Any]) -> int:
    """The one timing target: ``env.measure.threads``, used by training and by the
    evaluation alike (older configs: an env runner's CPUs)."""
    measure = cfg["env"].get("measure") or {}
    return int(measure.get("threads") or cfg["resources"].get("num_cpus_per_env_runner", 1))


def env_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The env section, with the timing threads and the cache folder resolved."""
    from envs import EnvConfig
    from envs.mlir.cache import default_cache_dir
    env = copy.deepcopy(cfg["env"])
    held = (cfg["run"].get("validate") or {}).get("benchmarks")
    if held and not env.get("benchmarks") and not env.get("suite") and env.get("split", "train") == "train":
        # The whole training split but the validation programs, which must stay held out, and the
        # imported blocks, which the measuring stick judges.
        from envs.suites import is_imported, load_suite, suite_path
        held = set(held)
        env["benchmarks"] = [b.name for b in load_suite(suite_path("train"))
                             if b.name not in held and not is_imported(b.family)]
    measure = env.setdefault("measure", {})
    measure["threads"] = timing_threads(cfg)
    measure["cache_dir"] = os.path.expanduser(measure.get("cache_dir") or default_cache_dir())
    try:
        EnvConfig.coerce(env)  # validate now, naming the setting, not inside a remote actor
    except ValueError as e:
        raise ConfigError(f"{cfg['_path']}: {e}") from None
    return env


def module_config(cfg: Dict[str, Any], env: Dict[str, Any]) -> Dict[str, Any]:
    """The model section plus the env's action layout (plain data: the module needs no env import)."""
    from envs import ActionLayout, EnvConfig
    ec = EnvConfig.coerce(env)
    return {**_search_space(cfg["model"]), "action_layout": ActionLayout(ec.features, ec.actions).spec()}


EVALUATE_KEYS = ("split", "benchmarks", "samples", "rounds", "temperature")


def closing_evaluation(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``run.evaluate``, checked before training (not after it): evaluate_checkpoint's settings."""
    from evaluate import SAMPLE_TEMPERATURE, check_settings
    ev = cfg["run"].get("evaluate") or {}
    where = f"{cfg['_path']}: run.evaluate"
    if not isinstance(ev, dict):
        raise ConfigError(f"{where} must be a mapping ({', '.join(EVALUATE_KEYS)})")
    unknown = [k for k in ev if k not in EVALUATE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; settings: {', '.join(EVALUATE_KEYS)}")
    try:
        out = {"split": str(ev.get("split", "eval")), "benchmarks": ev.get("benchmarks"),
               "samples": int(ev.get("samples", 4)), "rounds": int(ev.get("rounds", 3)),
               "temperature": float(ev.get("temperature", SAMPLE_TEMPERATURE))}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    try:
        check_settings(out["samples"], out["rounds"], out["temperature"], name=lambda key: f"{where}.{key}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return out


def validation(cfg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """``run.validate`` ({benchmarks: [...], every: N}), checked: training-suite programs
    the run does not train on, none of the eval split."""
    val = cfg["run"].get("validate")
    if not val:
        return None
    from envs.suites import is_imported, load_suite, suite_path
    names = list(val.get("benchmarks") or [])
    where = f"{cfg['_path']}: run.validate"
    if not names:
        raise ConfigError(f"{where}.benchmarks: name the held-out training programs to validate on")
    if cfg["env"].get("suite") or cfg["env"].get("split", "train") != "train":
        raise ConfigError(f"{where}: validation is defined on the shipped train split only")
    train = {b.name: b for b in load_suite(suite_path("train"))}
    evals = {b.name for b in load_suite(suite_path("eval"))}
    for n in names:
        if n in evals:
            raise ConfigError(f"{where}: {n} is in the eval split, which is for evaluation only")
        if n in train and is_imported(train[n].family):
            raise ConfigError(f"{where}: {n} is an imported block, a row of the measuring stick "
                              "(bench/vs_pytorch.py): no checkpoint may be chosen on it")
        if n not in train:
            raise ConfigError(f"{where}: no training program named {n}")
        if n in (cfg["env"].get("benchmarks") or ()):
            raise ConfigError(f"{where}: {n} is also trained on; validation programs must be held out")
    return {"benchmarks": names, "every": int(val.get("every", 5))}


ENV_CONFIG_FILE = "env_config.json"
"""Written beside a run's results: the env settings it trained with (evaluate.py reads its timing threads)."""


def save_env_config(exp_dir: str, env: Dict[str, Any]) -> None:
    import json
    os.makedirs(exp_dir, exist_ok=True)
    with open(os.path.join(exp_dir, ENV_CONFIG_FILE), "w") as f:
        json.dump(env, f, indent=1)


def build_algo_config(cfg: Dict[str, Any]):
    """The PPOConfig of a run configuration."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs import MlirScheduleEnv
    from rllib_models.callbacks import SchedulingMetrics
    from rllib_models.module import MlirPolicyModule

    res = cfg["resources"]
    ppo = {k: _search_space(v) for k, v in cfg["ppo"].items()}
    env = env_config(cfg)
    threads = env["measure"]["threads"]
    runners = int(res.get("num_env_runners", 1))
    runner_cpus = int(res.get("num_cpus_per_env_runner", threads))
    learners = int(res.get("num_learners", 0))
    if learners < 0:
        raise ConfigError(f"{cfg['_path']}: resources.num_learners must be >= 0 (0: one learner in the "
                          f"algorithm's process), got {learners}")
    if runners and runner_cpus < threads:
        raise ConfigError(f"{cfg['_path']}: resources.num_cpus_per_env_runner = {runner_cpus} is less than the "
                          f"{threads} timing threads (env.measure.threads): an env runner must reserve the CPUs "
                          f"it times on")
    config = (
        PPOConfig()
        .environment(MlirScheduleEnv, env_config=env)
        .framework("torch")
        .env_runners(num_env_runners=runners, num_cpus_per_env_runner=runner_cpus,
                     rollout_fragment_length="auto", sample_timeout_s=600)
        .learners(num_learners=learners, num_gpus_per_learner=float(res.get("num_gpus_per_learner", 0)),
                  num_cpus_per_learner=res.get("num_cpus_per_learner", "auto"))
        # The model settings go in the config's model_config (not the spec's), where Tune resolves
        # search spaces over the encoder (a sweep); the spec takes them from there.
        .rl_module(rl_module_spec=RLModuleSpec(module_class=MlirPolicyModule), model_config=module_config(cfg, env))
        .callbacks(SchedulingMetrics)
    )
    val = validation(cfg)
    if val:  # greedy episodes on held-out training programs, each once, between training iterations
        config.evaluation(evaluation_interval=val["every"], evaluation_duration=len(val["benchmarks"]),
                          evaluation_duration_unit="episodes", evaluation_num_env_runners=0,
                          evaluation_config=PPOConfig.overrides(
                              env_config={**env, "benchmarks": list(val["benchmarks"]), "cycle_benchmarks": True},
                              explore=False))
    if not runners:  # sampling (and so timing) in the algorithm's own process: it reserves the CPUs
        config.resources(num_cpus_for_main_process=max(1, threads))
    if res.get("custom_resources_per_learner"):
        # With num_learners 0 the learner lives in the algorithm's own process: its bundle carries them.
        # This is how placement on the GPU node is tested without a GPU (a stand-in resource).
        if learners:
            config.learners(custom_resources_per_learner=dict(res["custom_resources_per_learner"]))
        else:
            config.resources(custom_resources_for_main_process=dict(res["custom_resources_per_learner"]))
    if res.get("custom_resources_per_env_runner"):  # e.g. {rollout_slot: 1}: runners only on nodes that have it
        config.env_runners(custom_resources_per_env_runner=dict(res["custom_resources_per_env_runner"]))
    if res.get("placement_strategy"):
        config.resources(placement_strategy=str(res["placement_strategy"]))
    if cfg.get("run", {}).get("seed") is not None:  # torch, numpy and the env runners' envs
        config.debugging(seed=int(cfg["run"]["seed"]))
        if int(cfg["run"].get("num_samples", 1)) > 1:
            # A sweep: each trial its own seed, drawn (like the other spaces) by a search whose random
            # state is run.seed, so the sweep repeats. One seed for all would start trials of the same
            # width from the same weights: their greedy validations tie and ASHA can rank none.
            from ray import tune
            config.seed = tune.randint(0, 2**31 - 1)
    spaces = {k: v for k, v in ppo.items() if v is not cfg["ppo"][k]}
    try:
        config.training(**{k: v for k, v in ppo.items() if k not in spaces})
    except TypeError as e:
        raise ConfigError(f"{cfg['_path']}: invalid setting in ppo: {e}") from None
    for k, v in spaces.items():  # training() checks values; Tune resolves these before the algorithm sees them
        if not hasattr(config, k) or k.startswith("_"):
            raise ConfigError(f"{cfg['_path']}: invalid setting in ppo: {k!r} is not a PPO setting")
        setattr(config, k, v)
    return config


def dry_run(cfg: Dict[str, Any]) -> None:
    """Build the config and the module; print parameter counts and resources."""
    from envs import MlirScheduleEnv
    from rllib_models.module import MlirPolicyModule
    if one_trial(cfg) != cfg:
        print("(search spaces: built with the first value of each)")
        cfg = one_trial(cfg)
    config = build_algo_config(cfg)
    env = MlirScheduleEnv(config.env_config)
    module = MlirPolicyModule(observation_space=env.observation_space, action_space=env.action_space,
                              model_config=module_config(cfg, config.env_config))
    env.close()
    res = cfg["resources"]
    print(f"model {cfg['model'].get('model_type', 'lstm')} ({cfg['_path']})")
    for part, n in module.parameter_counts().items():
        print(f"  {part:<14} {n:>12,d} parameters")
    if config.num_learners:
        print(f"learners:   {config.num_learners} x ({config.num_gpus_per_learner:g} GPU, "
              f"{config.num_cpus_per_learner} CPU), each its own process")
    else:
        print(f"learner:    1, in the algorithm's process ({config.num_gpus_per_learner:g} GPU, "
              f"{config.num_cpus_for_main_process} CPU)")
    threads = config.env_config["measure"]["threads"]
    if config.num_env_runners:
        print(f"env runners: {config.num_env_runners} x ({config.num_cpus_per_env_runner} CPU, "
              f"timing threads {threads})")
    else:
        print(f"env runners: none (sampling in the algorithm's process, {config.num_cpus_for_main_process} CPU, "
              f"timing threads {threads})")
    print(f"benchmarks: {len(env.names)} of the {config.env_config.get('split', 'train')} split")
    print("(as the config asks: a run fits GPUs and env runners to the cluster it finds; flags insist)")


def check_cpus(config) -> None:
    """A process that reserves more CPUs than any node has would wait forever: say so now."""
    import ray
    need = config.num_cpus_per_env_runner if config.num_env_runners else config.num_cpus_for_main_process
    have = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if need > have:
        raise ConfigError(f"the timing threads (env.measure.threads = {config.env_config['measure']['threads']}) "
                          f"need {need} CPU(s) in one process, but the largest node has {have:g}; lower "
                          f"env.measure.threads")


def _requested(config) -> Dict[str, float]:
    """What the trial will reserve (RLlib's own placement request), resource by resource."""
    from ray.rllib.algorithms.ppo import PPO
    return dict(PPO.default_resource_request(config).required_resources)


def fit_resources(cfg: Dict[str, Any], args, address: Optional[str]) -> None:
    """Fit the run to the Ray cluster it found, one printed line per change: without the
    GPUs asked for, the learners run on CPUs (an error instead when --gpus-per-learner asked
    for them); env runners beyond the CPUs the cluster has are dropped (unless
    --num-env-runners set them), so that a laptop never waits for 16 CPUs. Env runners routed
    by a custom resource (resources.custom_resources_per_env_runner) go to nodes an autoscaler
    may still add: they are never capped."""
    import ray
    res = cfg["resources"]
    where = f"the cluster at {address}" if address else "this machine"
    have = ray.cluster_resources()
    learners = int(res.get("num_learners", 0))
    per = float(res.get("num_gpus_per_learner", 0))
    need = per * max(1, learners)
    gpus = float(have.get("GPU", 0.0))
    if per > 0 and gpus < need:
        if args.gpus_per_learner is not None:
            raise ConfigError(f"resources.num_gpus_per_learner = {per:g}, but {where} has {gpus:g} GPU(s); "
                              "set it to 0 (or --gpus-per-learner 0) to learn on a CPU")
        res["num_gpus_per_learner"] = 0
        print(f"{where} has {gpus:g} GPU(s), {need:g} asked for: the learner{'s' if learners > 1 else ''} "
              f"run{'' if learners > 1 else 's'} on CPUs (--gpus-per-learner N to require GPUs)")
    cpus = float(have.get("CPU", 0.0))
    routed = res.get("custom_resources_per_env_runner") or {}
    config = build_algo_config(one_trial(cfg))
    excess = _requested(config).get("CPU", 0.0) - cpus
    if args.num_env_runners is None and config.num_env_runners and excess > 0 and not routed:
        # Each env runner reserves its own CPUs: drop as many as the excess needs.
        asked = config.num_env_runners
        runners = max(0, asked - math.ceil(excess / config.num_cpus_per_env_runner))
        res["num_env_runners"] = runners
        config = build_algo_config(one_trial(cfg))
        print(f"{where} has {cpus:g} CPUs: {runners} env runner(s) instead of {asked} "
              f"(resources.num_env_runners; --num-env-runners N to insist)"
              + ("; sampling in the algorithm's process" if not runners else ""))
    for name, n in routed.items():
        if config.num_env_runners and have.get(name, 0.0) < n:
            if not address:  # an embedded Ray never gets such a node: the run would wait forever
                raise ConfigError(f"resources.custom_resources_per_env_runner asks for {name!r}, which "
                                  f"{where} does not have; drop it (--env-runner-resources '') for a local run")
            print(f"{where} has no {name!r} yet: the env runners wait for nodes that have it "
                  "(the autoscaler adds them)")
    want = _requested(config).get("CPU", 0.0)
    if want > cpus and not routed:
        raise ConfigError(f"the run reserves {want:g} CPUs (learners, env runners, the algorithm's process) but "
                          f"{where} has {cpus:g}; lower resources.num_env_runners / num_learners / "
                          f"num_cpus_per_learner")


def best_checkpoint(results, validated: bool, exp_dir: str = "") -> Optional[str]:
    """The best checkpoint (over every trial) by the validation metric when the run validates, else
    the latest one (said so); a local folder (one on remote storage is copied into exp_dir)."""
    from rllib_models.callbacks import VAL_METRIC  # the greedy policy on held-out training programs
    done = [r for r in results if r.checkpoint is not None]
    if not done:
        return None
    ckpt = None
    if validated:
        try:
            ckpt = results.get_best_result(VAL_METRIC, "max", scope="all").get_best_checkpoint(VAL_METRIC, "max")
        except (RuntimeError, KeyError, ValueError):  # no result carries the metric yet
            ckpt = None
        if ckpt is not None:
            print(f"best checkpoint (by {VAL_METRIC}): {ckpt.path}")
    if ckpt is None:
        ckpt = done[0].checkpoint
        why = "no validation ran before the run stopped" if validated else "no validation configured: run.validate"
        print(f"latest checkpoint ({why}): {ckpt.path}")
    import pyarrow.fs
    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem) or not exp_dir:
        return ckpt.path
    local = ckpt.to_directory(os.path.join(exp_dir, "best_checkpoint"))  # evaluate.py reads local folders
    print(f"  copied to {local}")
    return local


def _progress_callback():
    """A Tune callback printing one line per iteration (Tune imported lazily)."""
    from ray.tune import Callback

    class _Printer(Callback):
        def __init__(self):
            self.t0 = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            try:
                self._print(trial, result)
            except Exception as e:  # a progress line must never stop a training run
                print(f"[{trial.trial_id}] iter {result.get('training_iteration')}: (progress line failed: {e})")

        def _print(self, trial, result):
            m = result.get("mlir") or {}
            er = result.get("env_runners") or {}
            steps = er.get("num_env_steps_sampled_lifetime", er.get("num_env_steps_sampled", 0))
            fails = sum((m.get("failures") or {}).values())
            print(f"[{trial.trial_id}] iter {result.get('training_iteration', 0):>3}  env steps {int(steps or 0):>6}  "
                  f"episodes {int(m.get('episodes', 0)):>4}  speedup x{m.get('speedup_geomean', math.nan):6.2f} "
                  f"(geomean)  best x{m.get('best_speedup_geomean', math.nan):6.2f}  "
                  + (f"val x{m['val_speedup_geomean']:5.2f}  " if "val_speedup_geomean" in m else "") +
                  f"cache hits {100 * m.get('cache_hit_rate', 0.0):5.1f}%  failures {int(fails):>3}  "
                  f"{result.get('time_this_iter_s', 0.0):6.1f} s", flush=True)

    return _Printer()


def _resources(text: str) -> Dict[str, float]:
    """'rollout_slot=1,other=0.5' -> {'rollout_slot': 1.0, 'other': 0.5}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, n = part.partition("=")
        try:
            out[name.strip()] = float(n) if eq else 1.0
        except ValueError:
            raise ConfigError(f"--env-runner-resources: {part!r} is not NAME=N") from None
    return out


def storage(run: Dict[str, Any]) -> str:
    """Where Tune keeps the run (run.storage_path, a folder or a URI; default the results dir)."""
    path = str(run.get("storage_path") or run["results_dir"])
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _scheduler(cfg: Dict[str, Any], validated: bool):
    """run.scheduler: {type: asha | pbt, ...} on the validation metric (a sweep); None: FIFO."""
    from ray import tune
    from rllib_models.callbacks import VAL_METRIC
    spec = dict(cfg["run"].get("scheduler") or {})
    if not spec:
        return None
    kind = str(spec.pop("type", "asha")).lower()
    where = f"{cfg['_path']}: run.scheduler"
    if not validated:
        raise ConfigError(f"{where}: a scheduler compares trials by {VAL_METRIC}, the held-out validation: "
                          "set run.validate")
    common = dict(metric=VAL_METRIC, mode="max", time_attr="training_iteration")
    try:
        if kind == "asha":
            return tune.schedulers.ASHAScheduler(**common, **spec)
        if kind == "pbt":
            mutations = {k: _search_space(v) for k, v in (spec.pop("hyperparam_mutations", None) or {}).items()}
            return tune.schedulers.PopulationBasedTraining(**common, hyperparam_mutations=mutations, **spec)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    raise ConfigError(f"{where}.type: {kind!r}; asha or pbt")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("lstm", "distilbert"), default="lstm",
                    help="picks tune_configs/<model>.yaml (default lstm)")
    ap.add_argument("--config", help="another run configuration (YAML)")
    ap.add_argument("--address", help="join a Ray cluster ('auto' or host:port); default: an embedded local Ray")
    ap.add_argument("--num-env-runners", type=int, help="env runners (default: the config's, capped to the "
                    "cluster's CPUs; given, never capped)")
    ap.add_argument("--gpus-per-learner", type=float, help="GPUs of each learner (fractions share a GPU); "
                    "given, a cluster without them is an error instead of CPU learners")
    ap.add_argument("--num-learners", type=int, help="learner processes (0: one, in the algorithm's process)")
    ap.add_argument("--stop-iters", type=int)
    ap.add_argument("--seed", type=int, help="run.seed: seeds torch, numpy and the envs (default: none)")
    ap.add_argument("--stop-time", type=float, help="seconds")
    ap.add_argument("--results-dir", help="local folder of the run's files (default ~/mlir_rl_results)")
    ap.add_argument("--storage-path", help="where Tune keeps checkpoints and results: a folder or a URI "
                    "(s3://bucket/prefix; run.storage_path; default: the results dir)")
    ap.add_argument("--env-runner-resources", help="custom resources each env runner reserves, NAME=N[,NAME=N] "
                    "(resources.custom_resources_per_env_runner; '' for none): runners only on nodes that have them")
    ap.add_argument("--resume", action="store_true", help="continue the run in results-dir/name")
    ap.add_argument("--dry-run", action="store_true", help="build config and module, print sizes, exit")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation table at the end")
    args = ap.parse_args(argv)

    try:
        cfg = load_config(args.config or os.path.join(ROOT, "tune_configs", f"{args.model}.yaml"))
        res, run = cfg["resources"], cfg["run"]
        if args.num_env_runners is not None:
            res["num_env_runners"] = args.num_env_runners
        if args.gpus_per_learner is not None:
            res["num_gpus_per_learner"] = args.gpus_per_learner
        if args.num_learners is not None:
            res["num_learners"] = args.num_learners
        if args.stop_iters is not None:
            run["stop_iters"] = args.stop_iters
        if args.seed is not None:
            run["seed"] = args.seed
        if args.stop_time is not None:
            run["stop_time_s"] = args.stop_time
        if args.results_dir:
            run["results_dir"] = args.results_dir
        if args.storage_path:
            run["storage_path"] = args.storage_path
        if args.env_runner_resources is not None:
            res["custom_resources_per_env_runner"] = _resources(args.env_runner_resources)
        run["results_dir"] = os.path.abspath(os.path.expanduser(run.get("results_dir", "~/mlir_rl_results")))
        run.setdefault("name", cfg["model"].get("model_type", "run"))
        closing_evaluation(cfg)  # a bad setting named now, not after training
        if args.dry_run:
            dry_run(cfg)
            return 0
        return train(cfg, args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # settings refused by EnvConfig / encoders, already named
        print(f"error: {cfg.get('_path', '')}: {e}" if 'cfg' in locals() else f"error: {e}", file=sys.stderr)
        return 2


def train(cfg: Dict[str, Any], args) -> int:
    # Tune saves its experiment state (what --resume reads) at most every 10 s by default: a
    # driver killed in between resumes from an older checkpoint than its last one. One trial's
    # state is small: save it every second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    import ray
    from ray import tune
    from ray.rllib.algorithms.ppo import PPO

    from envs.mlir.config import available_cpus
    from rllib_models.callbacks import VAL_METRIC  # "best checkpoint": see best_checkpoint

    run = cfg["run"]
    address = args.address
    if not address and os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`: that job's cluster
        address = os.environ["RAY_ADDRESS"]
        print(f"joining the Ray cluster at RAY_ADDRESS={address}")
    if address:
        ctx = ray.init(address=address)
        run.setdefault("shared_cache", True)  # env runners on many nodes: one cache for all
    else:
        # address="local": always a new instance of our own, never someone else's cluster.
        try:
            ctx = ray.init(address="local", num_cpus=available_cpus(), include_dashboard=True,
                           dashboard_host="127.0.0.1")
        except Exception as e:  # the dashboard is a convenience: train without it
            print(f"warning: the Ray dashboard did not start ({str(e).strip().splitlines()[-1][:200]}); "
                  "training without it", file=sys.stderr)
            ray.shutdown()
            ctx = ray.init(address="local", num_cpus=available_cpus(), include_dashboard=False)
    try:
        fit_resources(cfg, args, address)
        if run.get("shared_cache"):
            from envs.mlir.shared_cache import start_server
            folder = env_config(cfg)["measure"]["cache_dir"]
            cfg["env"].setdefault("measure", {})["shared_cache"] = start_server(folder)  # this job registers
            print(f"time cache: one for the cluster, kept on this node in {folder}")
        config = build_algo_config(cfg)
        check_cpus(config)
        validated = validation(cfg) is not None
        url = getattr(ctx, "dashboard_url", None)
        print(f"Ray dashboard: {'http://' + url if url and not url.startswith('http') else url or 'not running'}")
        exp_dir = os.path.join(run["results_dir"], run["name"])  # this node's files: env config, evaluation
        where = storage(run)
        stored = f"{where}/{run['name']}"  # Tune's experiment folder (a URI on remote storage)
        print(f"results: {exp_dir}" + (f"; checkpoints in {stored}" if where != run["results_dir"]
                                       else f"  (tensorboard --logdir {exp_dir})"))
        save_env_config(exp_dir, config.env_config)
        stop = {"training_iteration": int(run.get("stop_iters", 20))}
        if run.get("stop_time_s"):
            stop["time_total_s"] = float(run["stop_time_s"])
        # A trial that fails (a node lost with its learner) restarts from its last checkpoint.
        retries = int(run.get("max_failures", 3 if address else 0))
        run_config = tune.RunConfig(
            name=run["name"], storage_path=where, stop=stop, verbose=0,
            failure_config=tune.FailureConfig(max_failures=retries),
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=int(run.get("checkpoint_every", 5)), checkpoint_at_end=True, num_to_keep=3,
                **({"checkpoint_score_attribute": VAL_METRIC, "checkpoint_score_order": "max"}
                   if validated else {})),
            callbacks=[_progress_callback()])
        samples = int(run.get("num_samples", 1))
        search = None
        if run.get("seed") is not None and samples > 1:  # the same seed draws the same trials
            from ray.tune.search import BasicVariantGenerator
            search = BasicVariantGenerator(random_state=int(run["seed"]))
        tune_config = tune.TuneConfig(num_samples=samples, scheduler=_scheduler(cfg, validated), search_alg=search,
                                      max_concurrent_trials=run.get("max_concurrent_trials"))
        if tune_config.scheduler is not None:
            # The validation metric arrives every run.validate.every iterations (carried after the
            # first); schedulers skip results without it, Tune's strict check would stop the trial.
            os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        if samples > 1 or tune_config.scheduler is not None:
            print(f"sweep: {samples} sample(s) of the search space"
                  + (f", {type(tune_config.scheduler).__name__} on {VAL_METRIC}" if tune_config.scheduler else ""))
        if args.resume:
            if not tune.Tuner.can_restore(stored):
                raise ConfigError(f"--resume: no run to continue in {stored}")
            print(f"resuming {stored}")
            tuner = tune.Tuner.restore(stored, trainable=PPO, resume_unfinished=True,
                                       resume_errored=True, param_space=config)
        else:
            tuner = tune.Tuner(PPO, param_space=config, run_config=run_config, tune_config=tune_config)
        results = tuner.fit()
        errors = [r.error for r in results if r.error]
        if errors:
            print(f"error: {len(errors)} trial(s) failed: {errors[0]}", file=sys.stderr)
        checkpoint = best_checkpoint(results, validated, exp_dir)
        if checkpoint is None:
            print("error: no checkpoint was written", file=sys.stderr)
            return 1
    finally:
        if run.get("shared_cache"):
            from envs.mlir.shared_cache import stop_server
            stop_server()  # this job leaves; the cache stops only if no other job uses it
        ray.shutdown()
    if not args.no_eval:
        from evaluate import evaluate_checkpoint
        evaluate_checkpoint(checkpoint, **closing_evaluation(cfg), env_overrides=config.env_config,
                            out=os.path.join(exp_dir, "evaluation.csv"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
