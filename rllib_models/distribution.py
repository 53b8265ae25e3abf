"""A hierarchical, masked action distribution over the env's flat MultiDiscrete.

The layout comes as plain data (`envs.ActionLayout.spec()`, passed through
``model_config["action_layout"]``): the transformations, and per head of each
transformation its mask key, its first position in the action vector, its
number of positions and of choices.  Nothing here knows which transformations
exist.

Inputs (``ACTION_DIST_INPUTS``, masks already folded in as ``FLOAT_MIN``):
the transformation logits, then each head's logits (positions x choices), in
the layout's head order.  A sample draws the transformation, then only the
heads that transformation reads; the other positions are 0 and add exactly 0
to log-probability, entropy and KL.

Log-probability and KL are exact: log p(t) + sum of t's heads' log-probs, and
KL(t) + sum_t p(t) * sum of t's heads' KL.  The entropy is *not* the exact
joint entropy but weighed per level: H(t) + sum_t p(t) * (sum of t's heads'
entropies / number of t's open positions), a position being open when it
allows more than one choice, so that a transformation with twelve tile
positions is not favoured by the entropy bonus over one with none.
"""
from __future__ import annotations

from typing import Dict, List, Mapping

import torch

from ray.rllib.core.distribution.distribution import Distribution

from .layout import logit_count

FLOAT_MIN = -3.4e38  # what RLlib uses for masked logits; never added twice (that gives -inf)
_MASKED = FLOAT_MIN / 2


class HierarchicalMaskedDistribution(Distribution):
    """See the module docstring. The layout comes through `get_partial_dist_cls(layout=...)`."""

    def __init__(self, logits: torch.Tensor, *, layout: Mapping, deterministic: bool = False):
        self.logits, self.layout, self.deterministic = logits, layout, deterministic
        self.nt = len(layout["transformations"])
        self.heads: List[Dict] = list(layout["heads"])
        sizes = [self.nt] + [h["positions"] * h["choices"] for h in self.heads]
        if logits.shape[-1] != sum(sizes):
            raise ValueError(f"expected {sum(sizes)} logits ({self.nt} transformations, heads "
                             f"{', '.join(str(h['positions']) + 'x' + str(h['choices']) for h in self.heads)}), "
                             f"got {logits.shape[-1]}")
        parts = torch.split(logits, sizes, dim=-1)
        self.t_logits = parts[0]
        self.head_logits = [p.reshape(*p.shape[:-1], h["positions"], h["choices"])
                            for p, h in zip(parts[1:], self.heads)]

    # --- helpers ---------------------------------------------------------------------
    @staticmethod
    def _draw(logits: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic:
            return logits.argmax(-1)
        # Gumbel-max: one fused op per head (3x faster than many torch.distributions).
        u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
        return (logits - torch.log(-torch.log(u))).argmax(-1)

    @staticmethod
    def _entropy(logits: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits, -1)
        p = lp.exp()
        return -(p * torch.where(logits > _MASKED, lp, torch.zeros_like(lp))).sum(-1)

    @staticmethod
    def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        lp, lq = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
        terms = lp.exp() * (lp - lq)
        return torch.where(p_logits > _MASKED, terms, torch.zeros_like(terms)).sum(-1)

    def _per_transformation(self, per_head: List[torch.Tensor]) -> torch.Tensor:
        """(..., n_transformations): each transformation's sum of a per-head quantity (0 without heads)."""
        cols = [torch.zeros_like(self.t_logits[..., 0]) for _ in range(self.nt)]
        for h, v in zip(self.heads, per_head):
            cols[h["transformation"]] = cols[h["transformation"]] + v
        return torch.stack(cols, dim=-1)

    # --- the Distribution API PPO uses ------------------------------------------------------
    def sample(self, *, sample_shape=None, **kwargs) -> torch.Tensor:
        t = self._draw(self.t_logits, self.deterministic)
        out = torch.zeros(*t.shape, len(self.layout["nvec"]), dtype=torch.long, device=t.device)
        out[..., 0] = t
        for h, logits in zip(self.heads, self.head_logits):
            pos = slice(h["offset"], h["offset"] + h["positions"])
            drawn = self._draw(logits, self.deterministic)
            out[..., pos] = torch.where((t == h["transformation"])[..., None], drawn, out[..., pos])
        return out

    def rsample(self, *, sample_shape=None, **kwargs):
        raise NotImplementedError("a categorical action has no reparameterized sample")

    def logp(self, value: torch.Tensor, **kwargs) -> torch.Tensor:
        value = value.long()
        t = value[..., 0]

        def pick(logits, idx):  # log-prob of idx; a masked choice is -inf
            lp = torch.log_softmax(logits, -1).gather(-1, idx[..., None]).squeeze(-1)
            raw = logits.gather(-1, idx[..., None]).squeeze(-1)
            return torch.where(raw > _MASKED, lp, torch.full_like(lp, float("-inf")))

        total = pick(self.t_logits, t)
        for h, logits in zip(self.heads, self.head_logits):
            lp = pick(logits, value[..., h["offset"]:h["offset"] + h["positions"]]).sum(-1)
            total = total + torch.where(t == h["transformation"], lp, torch.zeros_like(lp))
        return total

    def entropy(self, **kwargs) -> torch.Tensor:
        p_t = torch.softmax(self.t_logits, -1)
        h = self._per_transformation([self._entropy(lg).sum(-1) for lg in self.head_logits])
        n_open = self._per_transformation([((lg > _MASKED).sum(-1) > 1).to(lg.dtype).sum(-1)
                                           for lg in self.head_logits])
        return self._entropy(self.t_logits) + (p_t * h / n_open.clamp(min=1.0)).sum(-1)

    def kl(self, other: "HierarchicalMaskedDistribution", **kwargs) -> torch.Tensor:
        p_t = torch.softmax(self.t_logits, -1)
        cond = self._per_transformation([self._kl(a, b).sum(-1) for a, b in zip(self.head_logits,
                                                                                 other.head_logits)])
        return self._kl(self.t_logits, other.t_logits) + (p_t * cond).sum(-1)

    def to_deterministic(self) -> "HierarchicalMaskedDistribution":
        return HierarchicalMaskedDistribution(self.logits, layout=self.layout, deterministic=True)

    @staticmethod
    def required_input_dim(space, **kwargs) -> int:
        return logit_count(kwargs["layout"])

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs) -> "HierarchicalMaskedDistribution":
        return cls(logits, **kwargs)


def fold_masks(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked choices get FLOAT_MIN (once: adding it twice would give -inf)."""
    return torch.where(mask > 0, logits, torch.full_like(logits, FLOAT_MIN))
