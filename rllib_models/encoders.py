"""Encoders: plain torch modules from (OpFeatures, ProducerOpFeatures, ActionHistory)
to one embedding, registered by name (`model_type`).

Adding an encoder is one class with ``@register_encoder("name")``: its
constructor takes ``op_dim`` and ``history_dim`` plus its own keyword
settings (from the YAML ``model.encoder`` section) and sets ``out_dim``.
"""
from __future__ import annotations

from typing import Callable, Dict, Type

import torch
from torch import nn

ENCODERS: Dict[str, Type["Encoder"]] = {}


def register_encoder(name: str) -> Callable[[Type["Encoder"]], Type["Encoder"]]:
    def deco(cls):
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered ({ENCODERS[name].__name__})")
        ENCODERS[name] = cls
        cls.model_type = name
        return cls
    return deco


def build_encoder(model_type: str, op_dim: int, history_dim: int, **settings) -> "Encoder":
    if model_type not in ENCODERS:
        raise ValueError(f"invalid setting model.model_type: {model_type!r}; registered encoders: "
                         f"{', '.join(sorted(ENCODERS))}")
    try:
        return ENCODERS[model_type](op_dim=op_dim, history_dim=history_dim, **settings)
    except TypeError as e:
        raise ValueError(f"invalid setting model.encoder for {model_type}: {e}") from None


class Encoder(nn.Module):
    """(op (B, F), producer (B, F), history (B, H)) -> (B, out_dim)."""

    model_type: str
    out_dim: int

    def forward(self, op: torch.Tensor, producer: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_encoder("lstm")
class LSTMEncoder(Encoder):
    """MLIR-RL's encoder: a per-op MLP shared by consumer and producer, the
    sequence [consumer, producer] through an LSTM, its last hidden state
    concatenated with ActionHistory."""

    def __init__(self, op_dim: int, history_dim: int, hidden: int = 512, lstm_hidden: int = 512,
                 dropout: float = 0.0):
        super().__init__()
        self.op_mlp = nn.Sequential(nn.Linear(op_dim, hidden), nn.ELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, hidden), nn.ELU(), nn.Dropout(dropout))
        self.lstm = nn.LSTM(hidden, lstm_hidden, batch_first=True)
        self.out_dim = lstm_hidden + history_dim

    def forward(self, op, producer, history):
        seq = self.op_mlp(torch.stack([op, producer], dim=1))  # (B, 2, hidden)
        _, (h, _) = self.lstm(seq)
        return torch.cat([h[-1], history], dim=-1)


@register_encoder("distilbert")
class DistilBertEncoder(Encoder):
    """The user's design: each op projected to the model width, the sequence
    [CLS] consumer producer [SEP] (learned CLS/SEP embeddings) through
    `transformers.DistilBertModel` via `inputs_embeds`, the [CLS] output
    concatenated with ActionHistory: (B, dim + history_dim). Built from its
    config with random weights; the vocabulary is one token, so no unused
    word-embedding table is carried. A missing producer (all-zero features) is
    hidden by the attention mask. Dropout is 0 by default: RLlib samples with the
    module in eval mode and trains it in train mode, so any dropout makes PPO's
    probability ratios and KL noisy from the first minibatch."""

    def __init__(self, op_dim: int, history_dim: int, proj_hidden: int = 512, dim: int = 768, n_layers: int = 6,
                 n_heads: int = 12, hidden_dim: int = 3072, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        from transformers import DistilBertConfig, DistilBertModel
        self.proj = nn.Sequential(nn.Linear(op_dim, proj_hidden), nn.LayerNorm(proj_hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(proj_hidden, dim))
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        self.sep = nn.Parameter(torch.randn(dim) * 0.02)
        cfg = DistilBertConfig(vocab_size=1, dim=dim, n_layers=n_layers, n_heads=n_heads, hidden_dim=hidden_dim,
                               dropout=dropout, attention_dropout=attention_dropout, max_position_embeddings=8)
        self.bert = DistilBertModel(cfg)
        self.out_dim = dim + history_dim

    def forward(self, op, producer, history):
        b = op.shape[0]
        tokens = torch.stack([self.cls.expand(b, -1), self.proj(op), self.proj(producer),
                              self.sep.expand(b, -1)], dim=1)  # (B, 4, dim)
        # An op without a producer has all-zero ProducerOpFeatures: attention does not see that token.
        mask = torch.ones(b, 4, dtype=torch.long, device=op.device)
        mask[:, 2] = (producer != 0).any(-1).long()
        return self.attend(tokens, mask, history)

    def attend(self, tokens: torch.Tensor, mask: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        out = self.bert(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        return torch.cat([out[:, 0], history], dim=-1)
