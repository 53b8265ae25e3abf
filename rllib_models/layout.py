"""The action layout as the RL side sees it: plain data from the env's
`ActionLayout.spec()` (no import of the env, of MLIR or of Ray)."""
from __future__ import annotations

from typing import Mapping


def logit_count(layout: Mapping) -> int:
    """Number of logits a layout needs: the transformations, then every head."""
    return len(layout["transformations"]) + sum(h["positions"] * h["choices"] for h in layout["heads"])


def check_layout(layout: Mapping) -> None:
    """A clear error for a layout that is not `ActionLayout.spec()`'s."""
    need = ("transformations", "nvec", "features", "transformation_mask", "heads")
    if not isinstance(layout, Mapping) or any(k not in layout for k in need):
        raise ValueError(f"model_config['action_layout'] must be the env's ActionLayout.spec() (keys "
                         f"{', '.join(need)}); got {layout!r:.200}")
    for h in layout["heads"]:
        if not 0 <= h["transformation"] < len(layout["transformations"]) or \
                h["offset"] + h["positions"] > len(layout["nvec"]):
            raise ValueError(f"action_layout head {h} does not fit the transformations / nvec")
