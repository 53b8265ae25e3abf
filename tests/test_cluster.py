"""cluster.yaml passes Ray's own cluster-launcher validation."""
import copy
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cluster_yaml_passes_ray_launcher_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        cfg = yaml.safe_load(f)
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)  # raises on any schema error
    assert full["head_node_type"] == "head_gpu"
    assert full["available_node_types"]["cpu_worker"]["min_workers"] == 0
    assert full["available_node_types"]["cpu_worker"]["max_workers"] >= 1
    assert full["file_mounts"] == {"~/mlir-rl": "."}
    assert any("requirements.txt" in c for c in full["setup_commands"])
    # Token authentication is Ray's default; nothing in the config turns it off.
    text = open(os.path.join(ROOT, "cluster.yaml")).read()
    assert "RAY_AUTH_MODE=disabled" not in text
