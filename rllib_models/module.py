"""`MlirPolicyModule`: one TorchRLModule (new API stack) around any registered encoder.

Encoder -> policy backbone -> transformation head and, for every
transformation, its parameter heads (tile sizes per tiling transformation,
the interchange pointer, the unroll factor); masks from the observation are
folded into every level. The distribution (`HierarchicalMaskedDistribution`)
samples the transformation, then only its heads. A value head reads the same
encoder (``vf_share_encoder``) or its own copy.

model_config keys: ``model_type`` (a registered encoder), ``encoder`` (its
settings), ``backbone_hidden`` (policy/value MLP width), ``vf_share_encoder``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import gymnasium as gym
import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from .distribution import HierarchicalMaskedDistribution, fold_masks, layout_kwargs
from .encoders import build_encoder

OBS_KEYS = ("op_features", "producer_features", "action_history", "mask_transformation", "mask_T", "mask_TP",
            "mask_TF", "mask_I", "mask_U")


class MlirPolicyModule(TorchRLModule, ValueFunctionAPI):
    def setup(self):
        obs, act = self.observation_space, self.action_space
        if not isinstance(obs, gym.spaces.Dict) or any(k not in obs.spaces for k in OBS_KEYS):
            raise ValueError(f"MlirPolicyModule needs a Dict observation with keys {', '.join(OBS_KEYS)} "
                             f"(MlirScheduleEnv's); got {obs}")
        if not isinstance(act, gym.spaces.MultiDiscrete) or act.nvec.ndim != 1 or len(act.nvec) < 4:
            raise ValueError(f"MlirPolicyModule needs MultiDiscrete([n_transformations] + [n_choices] * L + "
                             f"[L, n_unroll]) (MlirScheduleEnv's); got {act}")
        cfg = dict(self.model_config or {})
        self.layout = layout_kwargs(act.nvec)
        L, C, U = self.layout["n_loops"], self.layout["n_choices"], self.layout["n_unroll"]
        op_dim = obs["op_features"].shape[0]
        hist_dim = obs["action_history"].shape[0]
        model_type = cfg.get("model_type", "lstm")
        enc_cfg = dict(cfg.get("encoder") or {})
        self.encoder = build_encoder(model_type, op_dim, hist_dim, **enc_cfg)
        self.vf_share_encoder = bool(cfg.get("vf_share_encoder", model_type == "distilbert"))
        self.vf_encoder = None if self.vf_share_encoder else build_encoder(model_type, op_dim, hist_dim, **enc_cfg)
        hidden = int(cfg.get("backbone_hidden", 256))
        self.pi = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU())
        self.t_head = nn.Linear(hidden, self.layout["n_transformations"])
        self.tile_head = nn.Linear(hidden, len(self.layout["tilings"]) * L * C)
        self.ptr_head = nn.Linear(hidden, L)
        self.unr_head = nn.Linear(hidden, U)
        self.vf = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.action_dist_cls = HierarchicalMaskedDistribution.get_partial_dist_cls(**self.layout)

    def _encode(self, obs: Dict[str, torch.Tensor], encoder) -> torch.Tensor:
        return encoder(obs["op_features"], obs["producer_features"], obs["action_history"])

    def _logits(self, emb: torch.Tensor, obs: Dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.pi(emb)
        b = h.shape[0]
        tile_masks = torch.stack([obs[k] for k in ("mask_T", "mask_TP", "mask_TF")], dim=1).reshape(b, -1)
        return torch.cat([fold_masks(self.t_head(h), obs["mask_transformation"]),
                          fold_masks(self.tile_head(h), tile_masks),
                          fold_masks(self.ptr_head(h), obs["mask_I"]),
                          fold_masks(self.unr_head(h), obs["mask_U"])], dim=-1)

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

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters per part (for --dry-run and the learner benchmark)."""
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        heads = sum(count(m) for m in (self.pi, self.t_head, self.tile_head, self.ptr_head, self.unr_head))
        return {"encoder": count(self.encoder), "value_encoder": count(self.vf_encoder), "policy_heads": heads,
                "value_head": count(self.vf), "total": count(self)}
