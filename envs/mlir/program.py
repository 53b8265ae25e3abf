"""The program model: parse a Linalg module, tag its ops, and describe each op.

`Program.from_text` / `Program.from_file` accept any module with one public
function over static-shape ranked tensors built of Linalg ops (named or
generic) and the tensor/arith glue torch-mlir emits.  Each Linalg op is tagged
``operation_<i>`` in program order (the tag is an attribute the transform
script matches on) and described by a `LinalgOp`: loops (bounds, iterator
types), load and store access matrices, arithmetic counts, op type, producer
and consumer edges.  Anything else is refused with `MlirInputError`.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from torch_mlir import ir, passmanager

from .errors import MlirInputError, line_of

OP_TYPES = ("matmul", "conv", "pooling", "elementwise", "reduction", "fill", "copy")
"""Op-type categories of the OpFeatures one-hot, in their one-hot order."""

ARITH_KINDS = ("+", "-", "*", "/", "exp", "max", "other")
"""Arithmetic categories counted per op body, in OpFeatures order."""

_ARITH_OF = {
    "arith.addf": "+", "arith.addi": "+", "arith.subf": "-", "arith.subi": "-",
    "arith.mulf": "*", "arith.muli": "*", "arith.divf": "/", "arith.divsi": "/",
    "arith.divui": "/", "math.exp": "exp", "arith.maximumf": "max", "arith.minimumf": "max",
    "arith.maxnumf": "max", "arith.minnumf": "max", "arith.maxsi": "max", "arith.minsi": "max",
    "arith.maxui": "max", "arith.minui": "max",
}
# Body ops that are bookkeeping, not arithmetic.
_NOT_ARITH = {"linalg.yield", "linalg.index", "arith.constant"}
# Ops the vectorizer recognizes as the combiner of a reduction.
_COMBINERS = {"arith.addf", "arith.addi", "arith.mulf", "arith.muli", "arith.maximumf", "arith.minimumf",
              "arith.maxnumf", "arith.minnumf", "arith.maxsi", "arith.minsi", "arith.maxui", "arith.minui",
              "arith.andi", "arith.ori", "arith.xori"}

# Ops accepted between Linalg ops (what torch-mlir's linalg-on-tensors output uses).
_GLUE_OPS = {
    "tensor.empty", "tensor.pad", "tensor.expand_shape", "tensor.collapse_shape",
    "tensor.extract_slice", "tensor.insert_slice", "tensor.cast", "tensor.yield",
    "func.return", "ml_program.global_load_const",
}
_GLUE_DIALECTS = ("arith.", "math.")
# Linalg ops that are not structured (no loops of their own to schedule).
_UNSTRUCTURED_LINALG = {"linalg.yield", "linalg.index", "linalg.softmax", "linalg.winograd_filter_transform",
                        "linalg.winograd_input_transform", "linalg.winograd_output_transform"}

DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "i64": "int64", "i32": "int32",
          "i16": "int16", "i8": "int8", "i1": "bool"}
"""MLIR element types the timing harness can feed, with their numpy names."""

AccessMatrix = Tuple[Tuple[int, ...], ...]


@dataclass(frozen=True)
class TensorType:
    """A static ranked tensor type."""

    shape: Tuple[int, ...]
    dtype: str  # MLIR element type, a key of DTYPES

    @property
    def mlir(self) -> str:
        return f"tensor<{'x'.join(map(str, self.shape)) + 'x' if self.shape else ''}{self.dtype}>"

    @property
    def memref(self) -> str:
        return self.mlir.replace("tensor<", "memref<", 1)


@dataclass(frozen=True)
class LinalgOp:
    """One Linalg op as the program holds it (before any transformation)."""

    tag: str
    index: int
    name: str
    op_type: str
    bounds: Tuple[int, ...]
    iterator_types: Tuple[str, ...]  # "parallel" / "reduction", per loop
    loads: Tuple[AccessMatrix, ...]  # one matrix per tensor input: rows = dims, cols = loops
    stores: Tuple[AccessMatrix, ...]  # one per output
    arith: Tuple[int, ...]  # counts in ARITH_KINDS order
    producers: Tuple[str, ...]  # tags of Linalg ops whose results this op reads
    consumers: Tuple[str, ...]
    operand_producers: Tuple[Optional[str], ...]  # per access matrix (loads then stores): producer tag
    result_uses: int  # uses of this op's results (1 = only its consumer)
    vectorizable_body: bool  # every body op is arith/math/index (no cf.assert, no tensor.extract)
    line: Optional[int]

    @property
    def num_loops(self) -> int:
        return len(self.bounds)

    @property
    def producer(self) -> Optional[str]:
        """The producer OpFeatures describe and TF fuses: the first one."""
        return self.producers[0] if self.producers else None

    @property
    def flops(self) -> int:
        """Arithmetic operations of the whole op (loop points x body ops)."""
        points = 1
        for b in self.bounds:
            points *= b
        return points * max(1, sum(self.arith))


def _linearize(expr, num_dims: int, where: str) -> Tuple[int, ...]:
    """Coefficients of a linear affine expression over the loop dims."""
    if isinstance(expr, ir.AffineDimExpr):
        row = [0] * num_dims
        row[expr.position] = 1
        return tuple(row)
    if isinstance(expr, ir.AffineConstantExpr):
        return (0,) * num_dims
    if isinstance(expr, ir.AffineAddExpr):
        e = expr
        a, b = _linearize(e.lhs, num_dims, where), _linearize(e.rhs, num_dims, where)
        return tuple(x + y for x, y in zip(a, b))
    if isinstance(expr, ir.AffineMulExpr):
        e = expr
        for var, const in ((e.lhs, e.rhs), (e.rhs, e.lhs)):
            if isinstance(const, ir.AffineConstantExpr):
                c = const.value
                return tuple(c * x for x in _linearize(var, num_dims, where))
    raise ValueError(f"{where}: non-linear indexing expression {expr}")


def tensor_type(t: ir.Type) -> Optional[TensorType]:
    """`t` as a TensorType; None unless it is a static-shape ranked tensor."""
    if not isinstance(t, ir.RankedTensorType):
        return None
    rt = t
    if not rt.has_static_shape:
        return None
    dtype = str(rt.element_type)
    return TensorType(tuple(rt.shape), dtype)


def _walk_ops(block) -> List[ir.Operation]:
    """Top-level ops of a block in order, without entering Linalg bodies."""
    return [op.operation for op in block.operations]


def _classify(name: str, iterator_types: Sequence[str], arith: Sequence[int]) -> str:
    short = name.split(".", 1)[1]
    if short in ("fill",):
        return "fill"
    if short.startswith(("conv", "depthwise_conv")):
        return "conv"
    if short.startswith("pooling"):
        return "pooling"
    if short.startswith(("matmul", "batch_matmul", "matvec", "vecmat", "batch_matvec", "batch_vecmat",
                         "batch_reduce_matmul", "contract", "dot")):
        return "matmul"
    if "reduction" in iterator_types:
        return "reduction"
    if sum(arith) == 0:
        return "copy"
    return "elementwise"


class Program:
    """A parsed, validated, tagged Linalg program (immutable once built)."""

    def __init__(self, text: str, source: str, func_name: str, inputs: Tuple[TensorType, ...],
                 outputs: Tuple[TensorType, ...], ops: Tuple[LinalgOp, ...]):
        self.text = text  # the tagged module, as MLIR prints it
        self.source = source
        self.func_name = func_name
        self.inputs = inputs
        self.outputs = outputs
        self.ops = ops
        self.hash = hashlib.sha256(text.encode()).hexdigest()[:16]
        self._by_tag = {op.tag: op for op in ops}

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.source))[0]

    @property
    def tags(self) -> Tuple[str, ...]:
        return tuple(op.tag for op in self.ops)

    def op(self, tag: str) -> LinalgOp:
        try:
            return self._by_tag[tag]
        except KeyError:
            raise KeyError(f"{self.source}: no op tagged {tag!r} (ops: {', '.join(self.tags)})") from None

    def tag_at_line(self, line: int) -> Optional[str]:
        """The tag of the op printed at `line` (1-based) of `text`, if any."""
        lines = self.text.splitlines()
        if 1 <= line <= len(lines):
            m = re.search(r'tag = "(operation_\d+)"', lines[line - 1])
            if m:
                return m.group(1)
        return None

    def schedule_order(self) -> Tuple[LinalgOp, ...]:
        """Last op first, so that a consumer is scheduled before its producers."""
        return tuple(reversed(self.ops))

    def describe(self) -> str:
        """A human-readable table of the ops, their loops and types."""
        lines = [f"{self.source}: @{self.func_name}, {len(self.ops)} Linalg op(s)"]
        for op in self.ops:
            loops = " ".join(f"{b}{'r' if t == 'reduction' else 'p'}" for b, t in zip(op.bounds, op.iterator_types))
            prod = f" <- {','.join(op.producers)}" if op.producers else ""
            lines.append(f"  {op.tag:<13} {op.name:<28} {op.op_type:<11} loops [{loops}]{prod}")
        return "\n".join(lines)

    @classmethod
    def from_file(cls, path: str) -> "Program":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MlirInputError(path, f"cannot read: {e.strerror}") from None
        return cls.from_bytes(data, path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "Program":
        if b"\0" in data:
            raise MlirInputError(source, "binary file, not MLIR text")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MlirInputError(source, f"not UTF-8 text (byte {e.start}); is this an MLIR file?") from None
        return cls.from_text(text, source)

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> "Program":
        with ir.Context(), ir.Location.unknown():
            return _build(text, source)


def _parse(text: str, source: str) -> ir.Module:
    try:
        return ir.Module.parse(text)
    except ir.MLIRError as e:
        diags = list(e.error_diagnostics)
        if diags:
            d = diags[0]
            raise MlirInputError(source, f"MLIR syntax error: {d.message}", line_of(d.location)) from None
        raise MlirInputError(source, f"MLIR syntax error: {e}") from None


def _build(text: str, source: str) -> Program:
    module = _parse(text, source)
    funcs = [op.operation for op in module.body.operations if op.operation.name == "func.func"]
    others = [op.operation for op in module.body.operations
              if op.operation.name not in ("func.func", "ml_program.global")]
    if others:
        o = others[0]
        raise MlirInputError(source, f"unsupported top-level op {o.name}", line_of(o.location))
    public = [f for f in funcs if "sym_visibility" not in f.attributes
              or ir.StringAttr(f.attributes["sym_visibility"]).value == "public"]
    if len(public) != 1:
        where = line_of(public[1].location) if len(public) > 1 else None
        names = ", ".join("@" + ir.StringAttr(f.attributes["sym_name"]).value for f in public) or "none"
        raise MlirInputError(source, f"expected exactly one public function, found {len(public)} ({names})", where)
    func = public[0]
    if len(funcs) > 1:
        extra = [f for f in funcs if f is not func][0]
        raise MlirInputError(source, "private helper functions are not supported; inline them into the public "
                             "function", line_of(extra.location))
    func_name = ir.StringAttr(func.attributes["sym_name"]).value
    ftype = ir.FunctionType(ir.TypeAttr(func.attributes["function_type"]).value)
    if len(func.regions[0].blocks) == 0:
        raise MlirInputError(source, f"@{func_name} is a declaration without a body", line_of(func.location))
    inputs, outputs = [], []
    for kind, types, out in (("argument", ftype.inputs, inputs), ("result", ftype.results, outputs)):
        for i, t in enumerate(types):
            tt = tensor_type(t)
            if tt is None:
                why = "dynamic shape" if isinstance(t, ir.RankedTensorType) else "not a ranked tensor"
                raise MlirInputError(source, f"@{func_name} {kind} #{i} has type {t}: {why}; only static-shape "
                                     "ranked tensors are supported", line_of(func.location))
            if tt.dtype not in DTYPES:
                raise MlirInputError(source, f"@{func_name} {kind} #{i} has element type {tt.dtype}, "
                                     f"not one of {', '.join(DTYPES)}", line_of(func.location))
            out.append(tt)
    if not outputs:
        raise MlirInputError(source, f"@{func_name} returns nothing; it must return its result tensors",
                             line_of(func.location))

    body = func.regions[0].blocks[0]
    linalg_ops: List[ir.Operation] = []
    for op in _walk_ops(body):
        name = op.name
        if name.startswith("linalg."):
            if name in _UNSTRUCTURED_LINALG:
                raise MlirInputError(source, f"unsupported op {name} (decompose it first)", line_of(op.location))
            linalg_ops.append(op)
        elif name not in _GLUE_OPS and not name.startswith(_GLUE_DIALECTS):
            raise MlirInputError(source, f"unsupported op {name}", line_of(op.location))
        for r in op.results:
            if isinstance(r.type, ir.ShapedType) and not r.type.has_static_shape:
                raise MlirInputError(source, f"{name} has a dynamic shape ({r.type}); only static shapes are "
                                     "supported", line_of(op.location))
    if not linalg_ops:
        raise MlirInputError(source, f"@{func_name} has no Linalg op to schedule", line_of(func.location))

    tags = {}
    for i, op in enumerate(linalg_ops):
        op.attributes["tag"] = ir.StringAttr.get(f"operation_{i}")
        tags[i] = f"operation_{i}"
    tagged_text = str(module)

    # Named ops keep their loops implicit: read them off a generalized copy, whose
    # linalg ops are in the same order as the originals (generalization is 1:1).
    generic_copy = ir.Module.parse(tagged_text)
    try:
        passmanager.PassManager.parse("builtin.module(func.func(linalg-generalize-named-ops))").run(
            generic_copy.operation)
    except ir.MLIRError as e:
        raise MlirInputError(source, f"cannot analyse the Linalg ops: {e}") from None
    gfunc = [op.operation for op in generic_copy.body.operations if op.operation.name == "func.func"
             and ir.StringAttr(op.operation.attributes["sym_name"]).value == func_name][0]
    generics = [op for op in _walk_ops(gfunc.regions[0].blocks[0]) if op.name.startswith("linalg.")]
    if len(generics) != len(linalg_ops) or any(g.name != "linalg.generic" for g in generics):
        bad = [o for o, g in zip(linalg_ops, generics) if g.name != "linalg.generic"]
        o = bad[0] if bad else linalg_ops[0]
        raise MlirInputError(source, f"unsupported op {o.name}: it has no generic form", line_of(o.location))

    # Producer edges from SSA values: which linalg op defines each operand.
    index_of = {}
    for i, op in enumerate(linalg_ops):
        for r in op.results:
            index_of[r] = i  # values compare and hash by the underlying MLIR value
    producers: Dict[int, List[int]] = {i: [] for i in range(len(linalg_ops))}
    consumers: Dict[int, List[int]] = {i: [] for i in range(len(linalg_ops))}
    for i, op in enumerate(linalg_ops):
        for v in op.operands:
            j = index_of.get(v)
            if j is not None and j not in producers[i]:
                producers[i].append(j)
                consumers[j].append(i)

    ops = []
    for i, (op, g) in enumerate(zip(linalg_ops, generics)):
        where = f"{op.name} ({tags[i]})"
        line = line_of(op.location)
        try:
            ops.append(_describe(i, tags[i], op, g, where, line,
                                 tuple(tags[j] for j in producers[i]), tuple(tags[j] for j in consumers[i]),
                                 lambda v: tags.get(index_of.get(v))))
        except ValueError as e:
            raise MlirInputError(source, str(e), line) from None
    return Program(tagged_text, source, func_name, tuple(inputs), tuple(outputs), tuple(ops))


def _plain_reduction(generic, n_inputs: int) -> bool:
    """Whether each output is reduced by one combiner op of its own block argument
    (what the vectorizer can take; an argmax with select is not)."""
    block = generic.regions[0].blocks[0]
    ops = list(block.operations)
    yield_op = ops[-1]
    for k, v in enumerate(yield_op.operands):
        out_arg = block.arguments[n_inputs + k]
        owner = v.owner
        if not isinstance(owner, ir.Operation) and hasattr(owner, "operation"):
            owner = owner.operation
        if not isinstance(owner, ir.Operation) or owner.name not in _COMBINERS:
            return False
        if not any(o == out_arg for o in owner.operands):
            return False
    return True


def _describe(index: int, tag: str, op, generic, where: str, line, producers, consumers,
              producer_of) -> LinalgOp:
    maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(generic.attributes["indexing_maps"])]
    iters = []
    for a in ir.ArrayAttr(generic.attributes["iterator_types"]):
        s = str(a)  # #linalg.iterator_type<parallel>
        iters.append("reduction" if "reduction" in s else "parallel")
    n_loops = len(iters)
    n_inputs = int(ir.DenseI32ArrayAttr(generic.attributes["operandSegmentSizes"])[0])
    operands = list(generic.operands)
    bounds: List[Optional[int]] = [None] * n_loops
    loads, stores, load_prod, store_prod = [], [], [], []
    for k, (v, m, orig) in enumerate(zip(operands, maps, op.operands)):
        rows = tuple(_linearize(e, n_loops, where) for e in m.results)
        shape = tuple(v.type.shape) if isinstance(v.type, ir.ShapedType) else ()
        for r, e in enumerate(m.results):
            if isinstance(e, ir.AffineDimExpr):
                d = e.position
                if bounds[d] is None:
                    bounds[d] = shape[r]
        if not isinstance(v.type, ir.ShapedType):
            continue  # a scalar (fill's value): no access matrix
        (loads if k < n_inputs else stores).append(rows)
        (load_prod if k < n_inputs else store_prod).append(producer_of(orig))
    if any(b is None for b in bounds):
        raise ValueError(f"{where}: a loop bound cannot be derived from the operand shapes")
    counts = dict.fromkeys(ARITH_KINDS, 0)
    vectorizable = True
    for bop in generic.regions[0].blocks[0].operations:
        name = bop.operation.name
        if not (name.startswith(("arith.", "math.")) or name in ("linalg.yield", "linalg.index")):
            vectorizable = False
        if name in _NOT_ARITH:
            continue
        counts[_ARITH_OF.get(name, "other")] += 1
    arith = tuple(counts[k] for k in ARITH_KINDS)
    if vectorizable and "reduction" in iters:
        vectorizable = _plain_reduction(generic, n_inputs)
    uses = sum(1 for r in op.results for _ in r.uses)
    return LinalgOp(tag=tag, index=index, name=op.name, op_type=_classify(op.name, iters, arith),
                    bounds=tuple(bounds), iterator_types=tuple(iters), loads=tuple(loads),
                    stores=tuple(stores), arith=arith, producers=producers, consumers=consumers,
                    operand_producers=tuple(load_prod + store_prod),
                    result_uses=uses, vectorizable_body=vectorizable, line=line)
