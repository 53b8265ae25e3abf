"""Linalg programs per op family, written from shape parameters (our own generators).

Each generator takes shape parameters and returns (MLIR text, FLOPs, bytes
moved). Convolutions and pooling take a pre-padded input, as a model's padded
layer sees it; the padding itself is exercised by the imported blocks. A
layer's parameters (a matmul's or a convolution's weights, a bias) are
arguments marked ``{rl.weight}``: constants of the model (envs/mlir/hoist.py).
"""
from __future__ import annotations

import math

from typing import Callable, Dict, Tuple

Gen = Callable[..., Tuple[str, int, int]]


def _t(*shape) -> str:
    return f"tensor<{'x'.join(map(str, shape))}xf32>"


def _weight(t: str) -> str:
    """A layer's parameter (a weight, a bias): a constant of the model, prepared once when a
    schedule packs it (envs/mlir/hoist.py)."""
    return f"{t} {{rl.weight}}"


def _parallel(n: int) -> str:
    return ", ".join(['"parallel"'] * n)


def _fill(name: str, shape, value: str = "0.0") -> str:
    t = _t(*shape)
    return (f"  %{name}_zero = arith.constant {value} : f32\n"
            f"  %{name}_empty = tensor.empty() : {t}\n"
            f"  %{name} = linalg.fill ins(%{name}_zero : f32) outs(%{name}_empty : {t}) -> {t}\n")


def matmul(m: int, n: int, k: int) -> Tuple[str, int, int]:
    a, b, c = _t(m, k), _t(k, n), _t(m, n)
    text = (f"func.func @matmul(%a: {a}, %b: {_weight(b)}) -> {c} {{\n" + _fill("acc", (m, n)) +
            f"  %r = linalg.matmul ins(%a, %b : {a}, {b}) outs(%acc : {c}) -> {c}\n"
            f"  return %r : {c}\n}}\n")
    return text, 2 * m * n * k, 4 * (m * k + k * n + m * n)


def _bias_relu(src: str, out_shape, bias_dim: int) -> str:
    n = len(out_shape)
    dims = ", ".join(f"d{i}" for i in range(n))
    t, tb = _t(*out_shape), _t(out_shape[bias_dim])
    return (f"  %y_empty = tensor.empty() : {t}\n"
            f"  %y = linalg.generic {{indexing_maps = [affine_map<({dims}) -> ({dims})>, "
            f"affine_map<({dims}) -> (d{bias_dim})>, affine_map<({dims}) -> ({dims})>], "
            f"iterator_types = [{_parallel(n)}]}} "
            f"ins(%{src}, %bias : {t}, {tb}) outs(%y_empty : {t}) {{\n"
            f"  ^bb0(%x: f32, %bb: f32, %o: f32):\n"
            f"    %s = arith.addf %x, %bb : f32\n"
            f"    %z = arith.constant 0.0 : f32\n"
            f"    %v = arith.maximumf %s, %z : f32\n"
            f"    linalg.yield %v : f32\n"
            f"  }} -> {t}\n")


def matmul_bias_relu(m: int, n: int, k: int) -> Tuple[str, int, int]:
    a, b, c = _t(m, k), _t(k, n), _t(m, n)
    text = (f"func.func @matmul_bias_relu(%a: {a}, %b: {_weight(b)}, %bias: {_weight(_t(n))}) -> {c} {{\n"
            + _fill("acc", (m, n)) +
            f"  %r = linalg.matmul ins(%a, %b : {a}, {b}) outs(%acc : {c}) -> {c}\n" +
            _bias_relu("r", (m, n), 1) + f"  return %y : {c}\n}}\n")
    return text, 2 * m * n * k + 2 * m * n, 4 * (m * k + k * n + n + m * n)


def batch_matmul(b: int, m: int, n: int, k: int) -> Tuple[str, int, int]:
    ta, tb, tc = _t(b, m, k), _t(b, k, n), _t(b, m, n)
    text = (f"func.func @batch_matmul(%a: {ta}, %b: {tb}) -> {tc} {{\n" + _fill("acc", (b, m, n)) +
            f"  %r = linalg.batch_matmul ins(%a, %b : {ta}, {tb}) outs(%acc : {tc}) -> {tc}\n"
            f"  return %r : {tc}\n}}\n")
    return text, 2 * b * m * n * k, 4 * b * (m * k + k * n + m * n)


def _out(size: int, k: int, stride: int) -> int:
    return (size - k) // stride + 1


def _attrs(stride: int) -> str:
    return (f"{{dilations = dense<1> : tensor<2xi64>, strides = dense<{stride}> : tensor<2xi64>}}")


def conv2d(h: int, w: int, c: int, f: int, k: int, stride: int, layout: str = "nhwc",
           bias_relu: bool = False) -> Tuple[str, int, int]:
    """A k x k convolution over a pre-padded h x w input (batch 1)."""
    oh, ow = _out(h, k, stride), _out(w, k, stride)
    if layout == "nhwc":
        ti, tw, to = _t(1, h, w, c), _t(k, k, c, f), (1, oh, ow, f)
        op, bias_dim = "linalg.conv_2d_nhwc_hwcf", 3
    elif layout == "nchw":
        ti, tw, to = _t(1, c, h, w), _t(f, c, k, k), (1, f, oh, ow)
        op, bias_dim = "linalg.conv_2d_nchw_fchw", 1
    else:
        raise ValueError(f"layout must be nhwc or nchw, got {layout!r}")
    args = f"%i: {ti}, %w: {_weight(tw)}" + (f", %bias: {_weight(_t(f))}" if bias_relu else "")
    name = f"conv2d_{layout}" + ("_bias_relu" if bias_relu else "")
    text = (f"func.func @{name}({args}) -> {_t(*to)} {{\n" + _fill("acc", to) +
            f"  %r = {op} {_attrs(stride)} ins(%i, %w : {ti}, {tw}) outs(%acc : {_t(*to)}) -> {_t(*to)}\n")
    if bias_relu:
        text += _bias_relu("r", to, bias_dim) + f"  return %y : {_t(*to)}\n}}\n"
    else:
        text += f"  return %r : {_t(*to)}\n}}\n"
    flops = 2 * oh * ow * f * k * k * c + (2 * oh * ow * f if bias_relu else 0)
    return text, flops, 4 * (h * w * c + k * k * c * f + oh * ow * f + (f if bias_relu else 0))


def depthwise(h: int, w: int, c: int, k: int, stride: int) -> Tuple[str, int, int]:
    oh, ow = _out(h, k, stride), _out(w, k, stride)
    ti, tw, to = _t(1, h, w, c), _t(k, k, c), (1, oh, ow, c)
    text = (f"func.func @depthwise(%i: {ti}, %w: {_weight(tw)}) -> {_t(*to)} {{\n" + _fill("acc", to) +
            f"  %r = linalg.depthwise_conv_2d_nhwc_hwc {_attrs(stride)} ins(%i, %w : {ti}, {tw}) "
            f"outs(%acc : {_t(*to)}) -> {_t(*to)}\n  return %r : {_t(*to)}\n}}\n")
    return text, 2 * oh * ow * c * k * k, 4 * (h * w * c + k * k * c + oh * ow * c)


def pool(h: int, w: int, c: int, k: int, stride: int, kind: str = "max") -> Tuple[str, int, int]:
    """Max pooling, or average pooling (a sum pooling then a division)."""
    oh, ow = _out(h, k, stride), _out(w, k, stride)
    ti, to = _t(1, h, w, c), (1, oh, ow, c)
    if kind == "max":
        init, op = "-3.40282347e+38", "linalg.pooling_nhwc_max"
    elif kind == "avg":
        init, op = "0.0", "linalg.pooling_nhwc_sum"
    else:
        raise ValueError(f"pool kind must be max or avg, got {kind!r}")
    text = (f"func.func @{kind}pool(%i: {ti}) -> {_t(*to)} {{\n" + _fill("acc", to, init) +
            f"  %win = tensor.empty() : {_t(k, k)}\n"
            f"  %r = {op} {_attrs(stride)} ins(%i, %win : {ti}, {_t(k, k)}) outs(%acc : {_t(*to)}) -> {_t(*to)}\n")
    if kind == "avg":
        text += (f"  %n = arith.constant {float(k * k)} : f32\n"
                 f"  %d_empty = tensor.empty() : {_t(*to)}\n"
                 f"  %d = linalg.generic {{indexing_maps = [affine_map<(a, b, c, d) -> (a, b, c, d)>, "
                 f"affine_map<(a, b, c, d) -> (a, b, c, d)>], iterator_types = [{_parallel(4)}]}} ins(%r : {_t(*to)}) outs(%d_empty : {_t(*to)}) {{\n"
                 f"  ^bb0(%x: f32, %o: f32):\n    %q = arith.divf %x, %n : f32\n    linalg.yield %q : f32\n"
                 f"  }} -> {_t(*to)}\n  return %d : {_t(*to)}\n}}\n")
    else:
        text += f"  return %r : {_t(*to)}\n}}\n"
    return text, oh * ow * c * k * k + (oh * ow * c if kind == "avg" else 0), 4 * (h * w * c + oh * ow * c)


def elementwise(shape: Tuple[int, ...], kind: str) -> Tuple[str, int, int]:
    """add (a residual connection), relu, or relu6 (MobileNetV2's clamp)."""
    t = _t(*shape)
    n = math.prod(shape)
    if kind == "add":
        text = (f"func.func @add(%a: {t}, %b: {t}) -> {t} {{\n  %e = tensor.empty() : {t}\n"
                f"  %r = linalg.add ins(%a, %b : {t}, {t}) outs(%e : {t}) -> {t}\n  return %r : {t}\n}}\n")
        return text, n, 12 * n
    dims = ", ".join(f"d{i}" for i in range(len(shape)))
    body = "    %z = arith.constant 0.0 : f32\n    %v = arith.maximumf %x, %z : f32\n"
    if kind == "relu6":
        body += "    %six = arith.constant 6.0 : f32\n    %w = arith.minimumf %v, %six : f32\n"
        out = "%w"
    elif kind == "relu":
        out = "%v"
    else:
        raise ValueError(f"elementwise kind must be add, relu or relu6, got {kind!r}")
    text = (f"func.func @{kind}(%a: {t}) -> {t} {{\n  %e = tensor.empty() : {t}\n"
            f"  %r = linalg.generic {{indexing_maps = [affine_map<({dims}) -> ({dims})>, "
            f"affine_map<({dims}) -> ({dims})>], iterator_types = [{_parallel(len(shape))}]}} "
            f"ins(%a : {t}) outs(%e : {t}) {{\n  ^bb0(%x: f32, %o: f32):\n{body}    linalg.yield {out} : f32\n"
            f"  }} -> {t}\n  return %r : {t}\n}}\n")
    return text, n * (2 if kind == "relu6" else 1), 8 * n


GENERATORS: Dict[str, Gen] = {
    "matmul": matmul, "matmul_bias_relu": matmul_bias_relu, "batch_matmul": batch_matmul, "conv2d": conv2d,
    "depthwise_conv": depthwise, "pool": pool, "elementwise": elementwise,
}
