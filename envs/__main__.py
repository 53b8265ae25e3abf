"""python -m envs: the action layout and observation sizes of the default settings
(the table `docs/ENV.md` describes, derived from the actions' own declarations)."""
from . import ActionLayout
from .mlir import FeatureLayout

layout, features = ActionLayout(), FeatureLayout()
print(layout.describe())
print(f"observation: op_features {features.op_size}, producer_features {features.op_size}, "
      f"action_history {features.history_size} ({features.step_size} per action slot: "
      f"{', '.join(f'{k} {v.stop - v.start}' for k, v in features.history_blocks.items())} after the one-hot), "
      + ", ".join(f"{k} {n}" for k, n in layout.mask_sizes().items()))
