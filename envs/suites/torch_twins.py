"""The same computation as a suite row, in PyTorch: what our code is measured against.

`torch_twin(row)` builds, from the row's generator parameters (or, for an
imported block, from the very `nn.Module` it was exported from), a callable
and its arguments made from *our* seeded inputs (in the MLIR function's
argument order and layout), plus the conversion of PyTorch's result back to
our output layout, so that a bench can check that both compute the same
thing before it compares their times. Layouts are PyTorch's own way of running
them: an NHWC convolution runs on channels-last tensors (a view, no copy),
NCHW on contiguous ones; an NHWC row is also timed on contiguous NCHW copies
(PyTorch's default) and the faster of the two counts. Conversions happen once,
outside the timed calls.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..mlir.config import MeasureConfig
from ..mlir.timing import sample_times, timed
from . import is_imported

FAMILY_GEN = {"matmul": "matmul", "matmul_bias_relu": "matmul_bias_relu", "batch_matmul": "batch_matmul",
              "conv2d": "conv2d", "conv_bias_relu": "conv2d", "depthwise_conv": "depthwise_conv",
              "maxpool": "pool", "avgpool": "pool", "add": "elementwise", "relu": "elementwise",
              "relu6": "elementwise"}
"""The generator (`generators.GENERATORS`) of each generated family."""


@dataclass
class TorchTwin:
    fn: Callable  # called as fn(*args), under torch.inference_mode
    args: Tuple
    to_ours: Callable[[Any], List[np.ndarray]]  # PyTorch's result -> our outputs' layout
    alt: Optional["TorchTwin"] = None  # the same on PyTorch's default (NCHW contiguous) layout


def _nhwc(x):
    """An NHWC array as the NCHW tensor PyTorch takes, channels-last in memory (a view)."""
    import torch
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def _from_nchw(y) -> List[np.ndarray]:
    return [y.permute(0, 2, 3, 1).contiguous().numpy()]


def _channels_last(fn: Callable, args: Tuple) -> TorchTwin:
    """An NHWC computation: on channels-last tensors, with the contiguous-NCHW variant beside it."""
    contiguous = tuple(a.contiguous() if a is not None else None for a in args)
    return TorchTwin(fn, args, _from_nchw, alt=TorchTwin(fn, contiguous, _from_nchw))


def plain_outputs(y) -> List[np.ndarray]:
    """PyTorch's result (a tensor or a tuple of them) as our outputs, same layout."""
    return [t.contiguous().numpy() for t in (y if isinstance(y, (tuple, list)) else (y,))]


def _twin_generated(gen: str, p: Dict, xs: Sequence[np.ndarray]) -> TorchTwin:
    import torch
    import torch.nn.functional as F
    t = [torch.from_numpy(x) for x in xs]
    if gen == "matmul":
        return TorchTwin(torch.matmul, (t[0], t[1]), plain_outputs)
    if gen == "matmul_bias_relu":
        return TorchTwin(lambda a, b, bias: torch.relu(torch.addmm(bias, a, b)), tuple(t), plain_outputs)
    if gen == "batch_matmul":
        return TorchTwin(torch.bmm, (t[0], t[1]), plain_outputs)
    if gen == "conv2d":
        s = p["stride"]
        bias = t[2] if p.get("bias_relu") else None
        post = torch.relu if p.get("bias_relu") else (lambda y: y)
        if p.get("layout", "nhwc") == "nhwc":  # filter HWCF -> FCHW, also channels-last
            w = torch.from_numpy(xs[1]).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
            return _channels_last(lambda x, w, b: post(F.conv2d(x, w, b, stride=s)), (_nhwc(xs[0]), w, bias))
        return TorchTwin(lambda x, w, b: post(F.conv2d(x, w, b, stride=s)), (t[0], t[1], bias), plain_outputs)
    if gen == "depthwise_conv":  # filter HWC -> C x 1 x H x W
        c, s = p["c"], p["stride"]
        w = torch.from_numpy(xs[1]).permute(2, 0, 1).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        return _channels_last(lambda x, w: F.conv2d(x, w, stride=s, groups=c), (_nhwc(xs[0]), w))
    if gen == "pool":
        k, s = p["k"], p["stride"]
        f = F.max_pool2d if p.get("kind", "max") == "max" else F.avg_pool2d
        return _channels_last(lambda x: f(x, k, s), (_nhwc(xs[0]),))
    if gen == "elementwise":
        fn = {"add": torch.add, "relu": torch.relu, "relu6": F.relu6}[p["kind"]]
        return TorchTwin(fn, tuple(t), plain_outputs)
    raise ValueError(f"no PyTorch twin for generator {gen!r}")


_BLOCKS: Dict[str, Any] = {}


def torch_twin(row: Dict, inputs: Sequence[np.ndarray]) -> TorchTwin:
    """The PyTorch computation of a suite row, on our inputs `inputs`."""
    family = row["family"]
    if family in FAMILY_GEN:
        return _twin_generated(FAMILY_GEN[family], json.loads(row["params"])["scaled"], inputs)
    if is_imported(family):
        import torch
        if not _BLOCKS:
            from .models import imported_blocks
            _BLOCKS.update((b[0], b[3]) for b in imported_blocks())
        if family not in _BLOCKS:
            raise ValueError(f"{row['name']}: no PyTorch module for family {family}")
        return TorchTwin(_BLOCKS[family], tuple(torch.from_numpy(x) for x in inputs), plain_outputs)
    raise ValueError(f"{row['name']}: no PyTorch twin for family {family!r}")


def time_torch(twin: TorchTwin, threads: int, repetitions: int = 5, min_sample_s: float = MeasureConfig.min_sample_s,
               warmup_s: float = MeasureConfig.warmup_s) -> float:
    """Median seconds of one call with `threads` intra-op threads, timed as our worker
    times our code (`envs.mlir.timing.sample_times`: warm-up calls for `warmup_s`, then
    samples of enough calls to fill `min_sample_s`). With a layout variant, the faster one."""
    if twin.alt is not None:
        return min(_time(twin, threads, repetitions, min_sample_s, warmup_s),
                   _time(twin.alt, threads, repetitions, min_sample_s, warmup_s))
    return _time(twin, threads, repetitions, min_sample_s, warmup_s)


def _time(twin: TorchTwin, threads: int, repetitions: int, min_sample_s: float, warmup_s: float) -> float:
    import torch
    torch.set_num_threads(threads)
    with torch.inference_mode():
        return statistics.median(sample_times(timed(lambda: twin.fn(*twin.args)), repetitions,
                                              warmup=MeasureConfig.warmup, warmup_s=warmup_s,
                                              min_sample_s=min_sample_s))


def run_twin(twin: TorchTwin) -> List[np.ndarray]:
    import torch
    with torch.inference_mode():
        return twin.to_ours(twin.fn(*twin.args))
