"""Part of a SIMD register (``fastconv._lanes``) loaded or stored: for rows shorter than
a vector, and the columns a row leaves over after its whole vectors.

* ``load_first(a, i, k)``: a[i : i + k] in the first k lanes of a vector, zero in the
  rest (0 <= k <= count); the elements past the k-th are not read, so a row's last
  values can be loaded without reading past the array's end;
* ``store_columns_part(a, i, step, vs, runs, width)``: ``_lanes.store_columns`` for the
  first ``runs`` lanes only, each run cut to its first ``width`` of P values:
  a[i + k*step + p] = vs[p][k] for k < runs, p < width; nothing else is written.

Both are one masked instruction a vector or run where the host has AVX-512 or AVX
(LLVM's masked load and store); a copy of 7 columns of 8 channels (the staging of a 7x7
feature map) took 8 masked runs where it took 56 single values.

>>> import numpy as np
>>> from numba import njit
>>> from fastconv import _lanes
>>> @njit
... def head(a, k):
...     v = load_first(a, 0, k)
...     return [_lanes.lane(v, j) for j in range(4)]
>>> head(np.arange(1.0, 4.0, dtype=np.float32), 2)      # the third value is not read
[1.0, 2.0, 0.0, 0.0]
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._lanes import (
    Lanes,
    _flat_float,
    _splat,
    _vector_pointer,
    columns_apply,
    transposed_rows,
)


def _first_lanes(builder, n: int, k):
    """The <n x i1> mask of lanes j < k (k an integer value; k <= 0: none)."""
    i64 = ir.IntType(64)
    if k.type.width < 64:
        k = builder.sext(k, i64)
    elif k.type.width > 64:
        k = builder.trunc(k, i64)
    vec = ir.VectorType(i64, n)
    return builder.icmp_signed("<", ir.Constant(vec, list(range(n))), _splat(builder, vec, k))


def _masked(builder, op: str, vec, ptr):
    """The declaration of LLVM's llvm.masked.load or .store on vectors of type vec."""
    bits = 64 if isinstance(vec.element, ir.DoubleType) else 32
    name = f"llvm.masked.{op}.v{vec.count}f{bits}.p0"
    mask = ir.VectorType(ir.IntType(1), vec.count)
    if op == "load":
        fnty = ir.FunctionType(vec, [ptr.type, ir.IntType(32), mask, vec])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vec, ptr.type, ir.IntType(32), mask])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def load_first(typingctx, ary, idx, k):
    """The vector of ary[idx : idx + k] in its first k lanes, zero in the others (1-D
    contiguous float array; the elements past idx + k are not read)."""
    if not (_flat_float(ary, idx) and isinstance(k, types.Integer)):
        return None
    lanes = Lanes(ary.dtype)

    def codegen(context, builder, sig, args):
        vec = context.get_value_type(lanes)
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], vec)
        mask = _first_lanes(builder, vec.count, args[2])
        return builder.call(_masked(builder, "load", vec, ptr),
                            [ptr, ir.IntType(32)(ary.dtype.bitwidth // 8), mask,
                             ir.Constant(vec, None)])
    return lanes(ary, idx, k), codegen


@intrinsic
def store_columns_part(typingctx, ary, idx, step, vs, runs, width):
    """ary[idx + k*step + p] = vs[p][k] for k < runs and p < width (``store_columns``
    cut to its first runs and the first values of each)."""
    if not (columns_apply(ary, idx, step, vs) and isinstance(runs, types.Integer)
            and isinstance(width, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        rows, row_at = transposed_rows(context, builder, sig, args)
        mask = _first_lanes(builder, vs.count, args[5])
        runs_v = context.cast(builder, args[4], sig.args[4], types.intp)
        align = ir.IntType(32)(ary.dtype.bitwidth // 8)
        for k, row in enumerate(rows):
            inside = builder.icmp_signed(">", runs_v, ir.Constant(runs_v.type, k))
            with builder.if_then(inside):
                ptr = row_at(k)
                builder.call(_masked(builder, "store", row.type, ptr), [row, ptr, align, mask])
        return context.get_dummy_value()
    return types.none(ary, idx, step, vs, runs, width), codegen
