"""Layer shapes of real models, scaled to run fast untransformed, and blocks imported from PyTorch.

Shapes are the layers' own (batch 1 for vision, sequence 128 for BERT-base,
256 for GPT-2; convolution inputs as padded); `scale` then halves spatial or
sequence sizes until the untransformed program stays under a FLOP budget, so
that it runs well under 0.5 s on 2 cores (the untransformed code reaches 1.5-4
GFLOP/s here). Both the layer's shape and the scaled one are kept.

Split: GPT-2 is only in `eval` (a source model the agent never trains on);
MobileNetV2's layers are divided between the two splits; every other model is
in `train`. `eval` shapes never occur in `train`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from . import generators as g


@dataclass(frozen=True)
class Layer:
    model: str
    layer: str
    family: str  # matmul, batch_matmul, conv2d, depthwise_conv, maxpool, avgpool, add, relu, ...
    gen: str  # a key of generators.GENERATORS
    params: Dict = field(default_factory=dict)
    split: str = "train"


def _conv(model, layer, h, c, f, k, s, layout="nhwc", bias_relu=False, split="train"):
    fam = "conv_bias_relu" if bias_relu else "conv2d"
    return Layer(model, layer, fam, "conv2d", dict(h=h, w=h, c=c, f=f, k=k, stride=s, layout=layout,
                                                   bias_relu=bias_relu), split)


def _mm(model, layer, m, n, k, fused=False, split="train"):
    return Layer(model, layer, "matmul_bias_relu" if fused else "matmul",
                 "matmul_bias_relu" if fused else "matmul", dict(m=m, n=n, k=k), split)


def _ew(model, layer, shape, kind, split="train"):
    return Layer(model, layer, kind, "elementwise", dict(shape=list(shape), kind=kind), split)


def _pool(model, layer, h, c, k, s, kind="max", split="train"):
    return Layer(model, layer, f"{kind}pool", "pool", dict(h=h, w=h, c=c, k=k, stride=s, kind=kind), split)


def _dw(model, layer, h, c, s, split="train"):
    return Layer(model, layer, "depthwise_conv", "depthwise_conv", dict(h=h, w=h, c=c, k=3, stride=s), split)


def _bmm(model, layer, b, m, n, k, split="train"):
    return Layer(model, layer, "batch_matmul", "batch_matmul", dict(b=b, m=m, n=n, k=k), split)


R18, R50, VGG, MBV2, BERT, GPT2 = "ResNet-18", "ResNet-50", "VGG-16", "MobileNetV2", "BERT-base", "GPT-2"

LAYERS: List[Layer] = [
    # ResNet-18
    _conv(R18, "conv1 7x7/2", 230, 3, 64, 7, 2),
    _pool(R18, "maxpool 3x3/2", 113, 64, 3, 2),
    _conv(R18, "layer1 conv 3x3", 58, 64, 64, 3, 1),
    _conv(R18, "layer1 conv 3x3 (NCHW)", 58, 64, 64, 3, 1, "nchw"),
    _conv(R18, "layer2 conv 3x3/2", 58, 64, 128, 3, 2),
    _conv(R18, "layer2 downsample 1x1/2", 56, 64, 128, 1, 2, "nchw"),
    _conv(R18, "layer3 conv 3x3/2", 30, 128, 256, 3, 2, "nchw"),
    _conv(R18, "layer4 conv 3x3 + bias + relu", 9, 512, 512, 3, 1, bias_relu=True),
    _ew(R18, "layer1 residual add", (1, 56, 56, 64), "add"),
    _ew(R18, "layer2 relu", (1, 28, 28, 128), "relu"),
    _pool(R18, "global avgpool 7x7", 7, 512, 7, 1, "avg"),
    _mm(R18, "fc (batch 8)", 8, 1000, 512),
    # ResNet-50
    _conv(R50, "layer1 1x1 reduce", 56, 256, 64, 1, 1),
    _conv(R50, "layer1 1x1 expand", 56, 64, 256, 1, 1, "nchw"),
    _conv(R50, "layer2 3x3 + bias + relu", 30, 128, 128, 3, 1, "nchw", bias_relu=True),
    _conv(R50, "layer3 1x1 reduce", 14, 1024, 256, 1, 1),
    _conv(R50, "layer4 3x3/2", 16, 256, 256, 3, 2),
    _ew(R50, "layer3 residual add", (1, 14, 14, 1024), "add"),
    _mm(R50, "fc (batch 8)", 8, 1000, 2048),
    # VGG-16
    _conv(VGG, "conv1_2 3x3", 226, 64, 64, 3, 1),
    _conv(VGG, "conv2_1 3x3 (NCHW)", 114, 64, 128, 3, 1, "nchw"),
    _conv(VGG, "conv3_1 3x3 + bias + relu", 58, 128, 256, 3, 1, bias_relu=True),
    _conv(VGG, "conv5_1 3x3", 16, 512, 512, 3, 1),
    _pool(VGG, "pool1 2x2/2", 224, 64, 2, 2),
    _pool(VGG, "pool4 2x2/2", 28, 512, 2, 2),
    _mm(VGG, "fc6 + bias + relu (batch 8)", 8, 4096, 25088, fused=True),
    _mm(VGG, "fc7 (batch 8)", 8, 4096, 4096),
    # MobileNetV2, train part
    _dw(MBV2, "block1 depthwise 3x3", 114, 32, 1),
    _dw(MBV2, "block2 depthwise 3x3/2", 114, 96, 2),
    _conv(MBV2, "block2 expand 1x1", 112, 16, 96, 1, 1),
    _ew(MBV2, "block2 relu6", (1, 112, 112, 96), "relu6"),
    # BERT-base (sequence 128)
    _mm(BERT, "attention q/k/v projection", 128, 768, 768),
    _mm(BERT, "ffn intermediate + bias + relu", 128, 3072, 768, fused=True),
    _mm(BERT, "ffn output", 128, 768, 3072),
    _bmm(BERT, "attention scores q.kT", 12, 128, 128, 64),
    _bmm(BERT, "attention context a.v", 12, 128, 64, 128),
    _ew(BERT, "residual add", (128, 768), "add"),
    _ew(BERT, "ffn relu", (128, 3072), "relu"),
    # MobileNetV2, eval part
    _dw(MBV2, "block3 depthwise 3x3/2", 58, 144, 2, split="eval"),
    _dw(MBV2, "block4 depthwise 3x3", 30, 192, 1, split="eval"),
    _dw(MBV2, "block6 depthwise 3x3", 16, 576, 1, split="eval"),
    _conv(MBV2, "block4 expand 1x1", 28, 32, 192, 1, 1, split="eval"),
    _conv(MBV2, "block6 project 1x1 (NCHW)", 14, 576, 96, 1, 1, "nchw", split="eval"),
    _conv(MBV2, "block7 expand 1x1 + bias + relu", 7, 160, 960, 1, 1, bias_relu=True, split="eval"),
    _ew(MBV2, "block6 relu6", (1, 14, 14, 576), "relu6", split="eval"),
    _pool(MBV2, "global avgpool 7x7", 7, 1280, 7, 1, "avg", split="eval"),
    # VGG / ResNet shapes not seen in training
    _conv(R18, "layer3 conv 3x3", 16, 256, 256, 3, 1, split="eval"),
    _conv(VGG, "conv4_1 3x3/2 (NCHW)", 30, 256, 512, 3, 2, "nchw", split="eval"),
    _pool(R50, "maxpool 3x3/2", 57, 64, 3, 2, split="eval"),
    # GPT-2 (sequence 256): eval only
    _mm(GPT2, "c_attn projection", 256, 2304, 768, split="eval"),
    _mm(GPT2, "mlp c_fc + bias + relu", 256, 3072, 768, fused=True, split="eval"),
    _mm(GPT2, "mlp c_proj", 256, 768, 3072, split="eval"),
    _bmm(GPT2, "attention scores q.kT", 12, 256, 256, 64, split="eval"),
    _bmm(GPT2, "attention context a.v", 12, 256, 64, 256, split="eval"),
    _ew(GPT2, "residual add", (256, 768), "add", split="eval"),
]

def _call(gen: str, params: Dict) -> Tuple[str, int, int]:
    p = dict(params)
    if gen == "elementwise":
        p["shape"] = tuple(p["shape"])
    return g.GENERATORS[gen](**p)


def _shrink_once(gen: str, p: Dict):
    """Halve one size: output pixels first, then channels (or rows, then the reduction)."""
    p = dict(p)
    if gen in ("conv2d", "depthwise_conv", "pool"):
        out = (p["h"] - p["k"]) // p["stride"] + 1
        if out >= 4:
            out //= 2
            p["h"] = p["w"] = (out - 1) * p["stride"] + p["k"]  # the padded input of `out` outputs
        elif gen == "conv2d" and max(p["c"], p["f"]) >= 16:
            p["c" if p["c"] >= p["f"] else "f"] //= 2
        elif gen != "conv2d" and p["c"] >= 16:
            p["c"] //= 2
        else:
            return None
    elif gen in ("matmul", "matmul_bias_relu", "batch_matmul"):
        order = ("m", "b", "k", "n") if gen == "batch_matmul" else ("m", "k", "n")
        for n in order:
            if p[n] >= {"m": 16, "b": 2}.get(n, 32):
                p[n] //= 2
                break
        else:
            return None
    elif gen == "elementwise":
        shape = list(p["shape"])
        i = max(range(len(shape)), key=lambda j: shape[j])
        if shape[i] < 2:
            return None
        shape[i] //= 2
        p["shape"] = shape
    return p


def scale(layer: Layer, max_flops: int, max_elements: int) -> Dict:
    """The layer's parameters, halved until the program fits the budget (FLOPs,
    and elements moved for the memory-bound families)."""
    p = dict(layer.params)
    while True:
        _, flops, nbytes = _call(layer.gen, p)
        if flops <= max_flops and nbytes // 4 <= 3 * max_elements:
            return p
        p2 = _shrink_once(layer.gen, p)
        if p2 is None:
            raise ValueError(f"{layer.model} {layer.layer}: cannot be scaled under {max_flops} FLOPs")
        p = p2


def layer_rows(max_flops: int, max_elements: int) -> List[Dict]:
    rows = []
    for layer in LAYERS:
        p = scale(layer, max_flops, max_elements)
        text, flops, nbytes = _call(layer.gen, p)
        rows.append(dict(family=layer.family, source_model=layer.model, layer=layer.layer, mlir=text,
                         flops=flops, bytes=nbytes, params=json.dumps({"layer": layer.params, "scaled": p}),
                         split=layer.split))
    return rows


def imported_blocks() -> List[Tuple]:
    """The PyTorch blocks the imported rows come from, built the same way every time
    (seeded): (family, model, layer, module, input, FLOPs, split, how it was scaled).
    The same modules are what PyTorch runs when the bench compares with it."""
    import torch

    class BasicBlock(torch.nn.Module):
        """ResNet's basic block: conv-bn-relu-conv-bn, identity shortcut, relu."""

        def __init__(self, c):
            super().__init__()
            self.c1, self.b1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
            self.c2, self.b2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + x)

    class MLP(torch.nn.Module):
        """A transformer feed-forward block: Linear-GELU-Linear."""

        def __init__(self, d, h):
            super().__init__()
            self.l1, self.l2 = torch.nn.Linear(d, h), torch.nn.Linear(h, d)

        def forward(self, x):
            return self.l2(torch.nn.functional.gelu(self.l1(x)))

    class Attention(torch.nn.Module):
        """Causal-free multi-head self-attention (one sequence)."""

        def __init__(self, d, heads):
            super().__init__()
            self.qkv, self.o, self.h = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d), heads

        def forward(self, x):
            t, d = x.shape
            q, k, v = (z.view(t, self.h, d // self.h).transpose(0, 1) for z in self.qkv(x).split(d, dim=1))
            a = torch.softmax(q @ k.transpose(1, 2) / (d // self.h) ** 0.5, dim=-1)
            return self.o((a @ v).transpose(0, 1).reshape(t, d))

    torch.manual_seed(0)
    blocks = [
        # (family, model, layer, module, input, FLOPs, split, how it was scaled)
        ("imported_resnet_block", R18, "layer1 basic block", BasicBlock(16), torch.randn(1, 16, 16, 16),
         2 * 2 * 16 * 16 * 16 * 16 * 9, "train", "64 -> 16 channels, 56 -> 16 pixels"),
        ("imported_mlp_block", BERT, "ffn block", MLP(64, 256), torch.randn(32, 64), 2 * 2 * 32 * 64 * 256,
         "train", "Linear-GELU-Linear, 768 -> 64, 3072 -> 256, sequence 32"),
        ("imported_attention_block", GPT2, "attention block", Attention(64, 4), torch.randn(32, 64),
         2 * 32 * 64 * 64 * 4 + 2 * 2 * 32 * 32 * 64, "eval", "768 -> 64, 12 -> 4 heads, sequence 32"),
    ]
    for _, _, _, module, *_ in blocks:
        module.eval()
        for m in module.modules():  # non-trivial batchnorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    return blocks


def imported_rows() -> List[Dict]:
    """Whole blocks imported from PyTorch modules through torch-mlir's FX importer."""
    from torch_mlir import fx

    rows = []
    for family, model, layer, module, x, flops, split, scaled in imported_blocks():
        text = str(fx.export_and_import(module, x, output_type="linalg-on-tensors"))
        nbytes = 4 * (x.numel() + sum(p.numel() for p in module.parameters()) + x.numel())
        rows.append(dict(family=family, source_model=model, layer=layer, mlir=text, flops=flops, bytes=nbytes,
                         params=json.dumps({"input_shape": list(x.shape), "scaled": scaled}), split=split))
    return rows
