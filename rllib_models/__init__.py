"""The RLlib side: encoders (pure torch, registered by `model_type`), the
hierarchical masked distribution, and the RLModule that wraps them. Knows
nothing of MLIR beyond the observation and action layout `envs` publishes."""
from .encoders import ENCODERS, Encoder, build_encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "build_encoder", "register_encoder"]
