"""Weights prepared once: what a schedule computes from constant inputs alone leaves the timed call.

A model's weights do not change between calls, so a compiler packs them once, when it loads the
model (IREE's data tiling folds the packs of constants; TVM rewrites the layout of its params),
instead of on every call.  An argument of the program's function marked ``{rl.weight}``::

    func.func @linear(%x: tensor<16x768xf32>, %w: tensor<768x2304xf32> {rl.weight}) -> ...

is such a constant, and so is a tensor ``arith.constant`` (how torch-mlir imports a module's
parameters: ``dense_resource`` blobs).  After the transform, the ops of the function body that read only weights
and constants (P's pack of a weight into panels: a loop nest from the weight into a fresh
tensor) move into a function of their own, `PREPARE_FUNC`; their results that the rest of the
body reads become extra arguments of the program's function.  The harness (compile.py) runs
that function once per compiled program, before any timed call, into buffers of its own, and
every timed call reads them.  Nothing that reads a non-weight input moves, and an op that reads
no weight stays (a fill of zeros stays a fill: moving it would swap it for a copy).
"""
from __future__ import annotations

from typing import List

WEIGHT_ATTR = "rl.weight"
PREPARE_FUNC = "__rl_prepare_weights"
_CONSTANT_OPS = ("arith.constant", "tensor.empty", "ub.poison")


def weight_args(func) -> List[int]:
    """Indices of the function's arguments marked `WEIGHT_ATTR`."""
    from torch_mlir import ir
    if "arg_attrs" not in func.attributes:
        return []
    return [i for i, a in enumerate(ir.ArrayAttr(func.attributes["arg_attrs"])) if WEIGHT_ATTR in ir.DictAttr(a)]


def _external(op) -> list:
    """The values `op` and the ops nested in it read that are defined outside it."""
    from torch_mlir import ir
    inside, reads = set(), []

    def visit(o):
        for region in o.regions:
            for block in region.blocks:
                inside.update(block.arguments)
        inside.update(o.results)
        reads.extend(o.operands)
        return ir.WalkResult.ADVANCE

    op.walk(visit)
    return [v for v in reads if v not in inside]


def _in_func(op, func):
    """The op of `func`'s body that holds `op` (itself if it is one); None if `op` is not in `func`."""
    op = op.operation
    while op.parent is not None:
        if op.parent.operation == func:
            return op
        op = op.parent.operation
    return None


def hoist_weight_layouts(module, func) -> list:
    """Move what is computed from weights alone out of `func` (see the module's docstring).

    Returns the types of the prepared values, in the order of the arguments they became
    (after the original ones); [] when nothing moved (no weight, or no op of weights alone)."""
    from torch_mlir import ir
    from torch_mlir.dialects import func as func_d
    func = func.operation
    body = func.regions[0].blocks[0]
    weights = [body.arguments[i] for i in weight_args(func)]
    top = [o.operation for o in body.operations][:-1]  # the return stays
    constants, moved = [], []
    known = set(weights)  # values a moved op may read: weights, constants, other moved ops' results
    derived = set(weights)  # values that depend on a weight
    for op in top:
        reads = _external(op)
        if op.name in _CONSTANT_OPS and not reads:
            constants.append(op)
            known.update(op.results)
            if op.name == "arith.constant" and isinstance(op.results[0].type, ir.RankedTensorType):
                derived.update(op.results)  # a parameter imported as a constant tensor
            continue
        static = all(isinstance(r.type, ir.RankedTensorType) and ir.RankedTensorType(r.type).has_static_shape
                     for r in op.results)
        if reads and static and all(v in known for v in reads) and any(v in derived for v in reads):
            moved.append(op)
            known.update(op.results)
            derived.update(op.results)
    if not moved:
        return []
    staying = [op for op in top if op not in moved and op not in constants] + [body.operations[len(top)].operation]

    stay = set(staying)
    frontier = [r for op in moved for r in op.results if any(_in_func(u.owner, func) in stay for u in r.uses)]
    if not frontier:
        return []
    with ir.InsertionPoint(module.body):
        prep = func_d.FuncOp(PREPARE_FUNC, ir.FunctionType.get([w.type for w in weights], [v.type for v in frontier]),
                             visibility="private")
    entry = prep.add_entry_block()
    remap = dict(zip(weights, entry.arguments))
    with ir.InsertionPoint(entry):
        for op in constants:  # copies: the body may still use them
            twin = op.clone()
            remap.update(zip(op.results, twin.results))
        ret = func_d.ReturnOp([])
    for op in moved:
        op.move_before(ret)

    def rewire(o):
        for old, new in remap.items():
            o.replace_uses_of_with(old, new)
        return ir.WalkResult.ADVANCE

    for op in moved:
        op.walk(rewire)
    for v in frontier:  # the body reads each prepared value from a new argument
        arg = body.add_argument(v.type, ir.Location.unknown())
        for use in list(v.uses):
            if _in_func(use.owner, func) is not None:
                use.owner.operands[use.operand_number] = arg
    with ir.InsertionPoint(ret):
        func_d.ReturnOp(frontier)
    ret.erase()
    ftype = ir.FunctionType(ir.TypeAttr(func.attributes["function_type"]).value)
    func.attributes["function_type"] = ir.TypeAttr.get(
        ir.FunctionType.get(list(ftype.inputs) + [v.type for v in frontier], list(ftype.results)))
    if "arg_attrs" in func.attributes:
        attrs = list(ir.ArrayAttr(func.attributes["arg_attrs"]))
        func.attributes["arg_attrs"] = ir.ArrayAttr.get(attrs + [ir.DictAttr.get({})] * len(frontier))
    return [v.type for v in frontier]
