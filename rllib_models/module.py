"""`MlirPolicyModule`: one TorchRLModule (new API stack) around any registered encoder.

Encoder -> policy backbone -> transformation head and one parameter head per
head of the action layout (tile sizes per tiling transformation, the
interchange pointer, the unroll factor, ... whatever the env declares); masks
from the observation are folded into every level. The distribution
(`HierarchicalMaskedDistribution`) samples the transformation, then only its
heads. A value head reads the same encoder (``vf_share_encoder``) or its own
copy.

model_config keys: ``action_layout`` (the env's `ActionLayout.spec()`: plain
data, so that this module imports nothing of the env or of MLIR),
``model_type`` (a registered encoder), ``encoder`` (its settings),
``backbone_hidden`` (policy/value MLP width), ``vf_share_encoder``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import gymnasium as gym
import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from .distribution import HierarchicalMaskedDistribution, fold_masks
from .layout import check_layout, logit_count
from .encoders import build_encoder


class MlirPolicyModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    def setup(self):
        obs, act = self.observation_space, self.action_space
        cfg = dict(self.model_config or {})
        if "action_layout" not in cfg:
            raise ValueError("MlirPolicyModule needs model_config['action_layout']: the env's action layout "
                             "(MlirScheduleEnv.action_layout_spec(); tune_run.py passes it)")
        layout = cfg["action_layout"]
        check_layout(layout)
        self.feature_keys = tuple(layout["features"])
        self.mask_keys = (layout["transformation_mask"],) + tuple(h["mask"] for h in layout["heads"])
        keys = self.feature_keys + self.mask_keys
        if not isinstance(obs, gym.spaces.Dict) or any(k not in obs.spaces for k in keys):
            raise ValueError(f"MlirPolicyModule needs a Dict observation with keys {', '.join(keys)} "
                             f"(the action layout's); got {obs}")
        if not isinstance(act, gym.spaces.MultiDiscrete) or [int(x) for x in act.nvec] != list(layout["nvec"]):
            raise ValueError(f"MlirPolicyModule needs MultiDiscrete({list(layout['nvec'])}) (the action layout's); "
                             f"got {act}")
        op_key, _, hist_key = self.feature_keys
        op_dim, hist_dim = obs[op_key].shape[0], obs[hist_key].shape[0]
        model_type = cfg.get("model_type", "lstm")
        enc_cfg = dict(cfg.get("encoder") or {})
        self.encoder = build_encoder(model_type, op_dim, hist_dim, **enc_cfg)
        self.vf_share_encoder = bool(cfg.get("vf_share_encoder", model_type == "distilbert"))
        self.vf_encoder = None if self.vf_share_encoder else build_encoder(model_type, op_dim, hist_dim, **enc_cfg)
        hidden = int(cfg.get("backbone_hidden", 256))
        self.pi = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU())
        # One linear layer for the transformation and every head (split in the distribution).
        self.logits_head = nn.Linear(hidden, logit_count(layout))
        self.vf = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.action_dist_cls = HierarchicalMaskedDistribution.get_partial_dist_cls(layout=layout)

    def _encode(self, obs: Dict[str, torch.Tensor], encoder) -> torch.Tensor:
        return encoder(*(obs[k] for k in self.feature_keys))

    def _logits(self, emb: torch.Tensor, obs: Dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.pi(emb)
        b = h.shape[0]
        masks = torch.cat([obs[k].reshape(b, -1) for k in self.mask_keys], dim=-1)
        return fold_masks(self.logits_head(h), masks)

    def _forward(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        obs = batch[Columns.OBS]
        emb = self._encode(obs, self.encoder)
        return {Columns.ACTION_DIST_INPUTS: self._logits(emb, obs), Columns.EMBEDDINGS: emb}

    def compute_values(self, batch: Dict[str, Any], embeddings: Optional[Any] = None) -> torch.Tensor:
        obs = batch[Columns.OBS]
        if self.vf_share_encoder:
            emb = embeddings if embeddings is not None else self._encode(obs, self.encoder)
        else:
            emb = self._encode(obs, self.vf_encoder)
        return self.vf(emb).squeeze(-1)

    def get_non_inference_attributes(self):
        """Env runners build the module `inference_only`: RLlib then drops these (the value
        head and, when not shared, the value encoder: half a DistilBERT) and ships only
        the rest of the weights to them."""
        return ["vf"] + ([] if self.vf_share_encoder else ["vf_encoder"])

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters per part (for --dry-run and the learner benchmark)."""
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        heads = count(self.pi) + count(self.logits_head)
        return {"encoder": count(self.encoder), "value_encoder": count(getattr(self, "vf_encoder", None)),
                "policy_heads": heads, "value_head": count(getattr(self, "vf", None)), "total": count(self)}
