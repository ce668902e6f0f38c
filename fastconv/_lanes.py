"""A SIMD register of floats for numba kernels: ``Lanes``, and the operations on it.

numba's loop vectoriser vectorises innermost loops, and numba runs LLVM without its
straight-line (SLP) vectoriser, so a kernel that wants a few accumulators of a handful
of contiguous outputs each (one register each, over a long loop of taps) cannot say so
in plain numba: short lane loops are unrolled into scalar code, or the tap loop is
vectorised as a reduction. ``Lanes`` is an LLVM vector of ``LANE_BYTES`` bytes (one
AVX-512 register where the host has AVX-512, else one AVX register; ``WIDE`` says
which), so such a kernel keeps its accumulators in registers:

* ``load(a, i)``: the lanes a[i : i + count] of a 1-D contiguous float array (no bounds
  check: the caller keeps i + count <= a.size); ``load_f64(a, i)``: a[i : i + k] as a
  vector of float64 (k of them per vector: float32 values widened);
* ``store(a, i, v)``: a[i : i + count] = v (the same rules); ``store_f64(a, i, v)``:
  a float64 vector v stored into a float32 array (each value rounded) or a float64 one;
  ``as_stored(a, v)``: the float64 values ``store_f64(a, i, v)`` would keep (v rounded
  to a's dtype and widened back; v a vector or a scalar);
* ``store_columns(a, i, step, vs)``: a[i + k*step + p] = vs[p][k] for the P vectors
  vs[p] (P = 2, 4 or 8) and every lane k: P vectors written as ``count`` runs of P (a
  transpose); a part of a vector or of such runs: ``fastconv._lanes_part``;
* ``store_stream(a, i, v)``: ``store`` past the caches (a non-temporal store: no read
  of the line first, and the line is not kept), a + i on a ``LANE_BYTES`` boundary
  (the caller's guarantee: ``can_stream``); ``put(a, i, v, stream)``: one or the other;
  a kernel task that streams ends with ``stream_fence()``, which orders its streamed
  stores before what follows;
* ``fma(acc, s, v)``: acc + s * v, the scalar s in every lane (one fused multiply-add);
* ``fma_lanes(acc, u, v)``: acc + u * v, lane by lane (u, v vectors);
* ``splat(a, s)``: the scalar s in every lane of a vector of a's dtype;
* ``add(u, v)``: u + v, lane by lane; ``zeros(a)``: a vector of zeros of a's dtype;
* ``where_positive(v, m)``: v in the lanes where m > 0, else 0 (a NaN in m gives 0: a
  ReLU's gradient, m its output); ``relu(v)``: 0 in the lanes where v <= 0, v elsewhere
  (NaN kept);
* the operators ``u + v``, ``u - v`` (lane by lane) and ``s * v``, ``v * s`` (a scalar
  of the lanes' type in every lane), so that a formula written for floats (a Winograd
  transform) runs on vectors unchanged;
* ``lane(v, k)``: lane k of v (0 <= k < count);
* ``count(a)``: how many lanes of a's dtype a vector holds (in a kernel);
  ``per_register(itemsize)`` the same for host code (planners, drivers).

>>> import numpy as np
>>> from numba import njit
>>> from fastconv import _lanes
>>> @njit
... def axpy_head(s, x, y):      # s * x + y over the first vector of lanes
...     v = _lanes.fma(_lanes.load(y, 0), s, _lanes.load(x, 0))
...     return [_lanes.lane(v, k) for k in range(_lanes.count(y))]
>>> n = per_register(4)
>>> out = axpy_head(np.float32(2), np.ones(n, np.float32), np.arange(n, dtype=np.float32))
>>> out[:3]
[2.0, 3.0, 4.0]
"""

from __future__ import annotations

import operator

from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model


def _vector_bytes() -> int:
    """64 where the host CPU has AVX-512 (numba compiles for the host), else 32."""
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:     # a host LLVM cannot describe: the narrower registers
        return 32
    return 64 if features.get("avx512f", False) else 32


#: Bytes of one ``Lanes`` vector.
LANE_BYTES = _vector_bytes()
#: Whether the host has AVX-512's 32 vector registers (else AVX's 16): kernels size their
#: register tiles, and planners the bounds measured per register file, by it.
WIDE = LANE_BYTES == 64


def _host_cpu() -> str:
    """LLVM's name of the CPU numba compiles for ("" where LLVM cannot say)."""
    try:
        return llvm.get_host_cpu_name()
    except RuntimeError:
        return ""


#: LLVM's name of the host CPU (e.g. "znver4", "sapphirerapids"; "" where unknown).
HOST_CPU = _host_cpu()


def per_register(itemsize: int) -> int:
    """Floats of ``itemsize`` bytes that one vector holds (``count`` in host code)."""
    return LANE_BYTES // itemsize


class Lanes(types.Type):
    """numba type of a vector of ``LANE_BYTES // itemsize`` floats of ``dtype``."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.count = per_register(dtype.bitwidth // 8)
        super().__init__(name=f"Lanes({dtype}x{self.count})")


@register_model(Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.count))


def _vector_pointer(context, builder, aryty, ary, idx, vec):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [idx]), vec.as_pointer())


def _flat_float(ary, idx) -> bool:
    """Whether ary is a 1-D float array and idx an integer (the loads' arguments)."""
    return (isinstance(ary, types.Array) and ary.ndim == 1
            and isinstance(ary.dtype, types.Float) and isinstance(idx, types.Integer))


@intrinsic
def load_f64(typingctx, ary, idx):
    """The float64 vector of ary[idx : idx + count64] (count64: lanes of a float64
    vector), ary a 1-D contiguous float32 array (widened) or float64 one (loaded)."""
    if not _flat_float(ary, idx):
        return None
    lanes = Lanes(types.float64)

    def codegen(context, builder, sig, args):
        wide = context.get_value_type(lanes)
        if ary.dtype == types.float64:
            ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], wide)
            return builder.load(ptr, align=8)
        vec = ir.VectorType(ir.FloatType(), lanes.count)
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], vec)
        return builder.fpext(builder.load(ptr, align=4), wide)
    return lanes(ary, idx), codegen


@intrinsic
def load(typingctx, ary, idx):
    """The vector ary[idx : idx + count] (1-D contiguous float array)."""
    if not _flat_float(ary, idx):
        return None
    lanes = Lanes(ary.dtype)

    def codegen(context, builder, sig, args):
        vec = context.get_value_type(lanes)
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], vec)
        return builder.load(ptr, align=ary.dtype.bitwidth // 8)
    return lanes(ary, idx), codegen


def _splat(builder, vec, scalar):
    """The vector of type vec with scalar in every lane."""
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), scalar, i32(0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, vec.count), [0] * vec.count))


def _fma_call(builder, vec, dtype, args):
    """llvm.fma on three vectors: args[0] * args[1] + args[2]."""
    bits = 32 if dtype == types.float32 else 64
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                        f"llvm.fma.v{vec.count}f{bits}")
    return builder.call(fn, args)


def _vector_store(ary, idx, v, stream: bool):
    """The typing and code of ``store`` (``stream``: of ``store_stream``), or None for
    arguments it does not take."""
    if not (isinstance(ary, types.Array) and ary.ndim == 1 and isinstance(v, Lanes)
            and ary.dtype == v.dtype and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vec = context.get_value_type(sig.args[2])
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], vec)
        inst = builder.store(args[2], ptr,
                             align=LANE_BYTES if stream else ary.dtype.bitwidth // 8)
        if stream:
            inst.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()
    return types.none(ary, idx, v), codegen


@intrinsic
def store(typingctx, ary, idx, v):
    """ary[idx : idx + count] = v (1-D contiguous float array of v's dtype)."""
    return _vector_store(ary, idx, v, False)


@intrinsic
def store_f64(typingctx, ary, idx, v):
    """ary[idx : idx + k] = v for a float64 vector v (k lanes): ary a 1-D contiguous
    float32 array (each value rounded to nearest) or float64 one; ``load_f64``'s
    counterpart."""
    if not (_flat_float(ary, idx) and isinstance(v, Lanes) and v.dtype == types.float64):
        return None

    def codegen(context, builder, sig, args):
        value = args[2]
        if ary.dtype != types.float64:
            value = builder.fptrunc(value, ir.VectorType(ir.FloatType(), v.count))
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], value.type)
        builder.store(value, ptr, align=ary.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(ary, idx, v), codegen


@intrinsic
def as_stored(typingctx, ary, v):
    """v (a float64 vector or scalar) as ``store_f64`` would keep it in ary: rounded to
    ary's dtype and widened back (float64 arrays: v itself). Explicit casts, which no
    fast-math flag lets LLVM drop: a kernel that recomputes a value another kernel
    stored gets the stored value's sign."""
    scalar = v == types.float64
    if not (isinstance(ary, types.Array) and isinstance(ary.dtype, types.Float)
            and (scalar or (isinstance(v, Lanes) and v.dtype == types.float64))):
        return None

    def codegen(context, builder, sig, args):
        if ary.dtype == types.float64:
            return args[1]
        narrow = ir.FloatType() if scalar else ir.VectorType(ir.FloatType(), v.count)
        return builder.fpext(builder.fptrunc(args[1], narrow), args[1].type)
    return v(ary, v), codegen


#: Outputs of at least this many bytes may be written past the caches
#: (``store_stream``): they would not stay there, and a store that first reads its line
#: costs twice the memory traffic. Alternating in one process (2-core AMD EPYC, median of
#: 21): the depthwise 3x3 of 128 channels at 56x56, batch 16 (25.7 MB out) 0.81x the
#: time with streamed stores; at 28x28 and 14x14 (3.2 and 1.6 MB) 1.1x.
STREAM_BYTES = 16 << 20
_X86 = llvm.get_process_triple().startswith(("x86_64", "i386", "i686"))


def can_stream(a, channels: int) -> bool:
    """Whether a kernel may write the channels-last array a (``channels`` contiguous
    values a pixel) with ``store_stream`` one block of lanes at a time: C-contiguous, at
    least ``STREAM_BYTES``, its data on a ``LANE_BYTES`` boundary (``fastconv._pool``
    aligns what it hands out) and whole blocks a pixel, so that every store is on one."""
    return (a.flags.c_contiguous and a.nbytes >= STREAM_BYTES
            and channels * a.itemsize % LANE_BYTES == 0
            and a.__array_interface__["data"][0] % LANE_BYTES == 0)


@intrinsic
def store_stream(typingctx, ary, idx, v):
    """ary[idx : idx + count] = v with a non-temporal store (``store``'s rules, and
    ary's element idx on a ``LANE_BYTES`` boundary)."""
    return _vector_store(ary, idx, v, True)


@njit(inline="always")
def put(a, i, v, stream):
    """``store_stream(a, i, v)`` where ``stream``, else ``store(a, i, v)``."""
    if stream:
        store_stream(a, i, v)
    else:
        store(a, i, v)


@intrinsic
def stream_fence(typingctx):
    """Order the streamed stores before everything after (x86 ``sfence``; elsewhere a
    full fence)."""
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def store_columns(typingctx, ary, idx, step, vs):
    """ary[idx + k*step + p] = vs[p][k] for p < P, k < count (vs: P = 2, 4 or 8
    vectors)."""
    if not columns_apply(ary, idx, step, vs):
        return None

    def codegen(context, builder, sig, args):
        rows, row_at = transposed_rows(context, builder, sig, args)
        for k, row in enumerate(rows):
            builder.store(row, row_at(k), align=ary.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(ary, idx, step, vs), codegen


def columns_apply(ary, idx, step, vs) -> bool:
    """Whether ``store_columns`` takes these argument types."""
    return (isinstance(ary, types.Array) and ary.ndim == 1
            and isinstance(vs, types.UniTuple) and vs.count in (2, 4, 8)
            and isinstance(vs.dtype, Lanes) and ary.dtype == vs.dtype.dtype
            and isinstance(idx, types.Integer) and isinstance(step, types.Integer))


def transposed_rows(context, builder, sig, args):
    """``store_columns``' code up to its stores: the ``count`` runs (row k: vs[p][k]
    for p < P, a vector of P values) and a function of k giving run k's pointer
    (ary + idx + k*step)."""
    ary, vs = sig.args[0], sig.args[3]
    n, cols = vs.dtype.count, vs.count
    i32 = ir.IntType(32)

    def shuffle(u, v, picks):
        return builder.shuffle_vector(u, v, ir.Constant(ir.VectorType(i32, len(picks)),
                                                        list(picks)))
    parts = [builder.extract_value(args[3], p) for p in range(cols)]
    while len(parts) > 1:            # concatenate: <P*n> = vs[0] | vs[1] | ... | vs[P-1]
        size = parts[0].type.count
        parts = [shuffle(parts[q], parts[q + 1], range(2 * size))
                 for q in range(0, len(parts), 2)]
    row_type = ir.VectorType(context.get_value_type(vs.dtype.dtype), cols)
    data = context.make_array(ary)(context, builder, args[0]).data
    idx_v = context.cast(builder, args[1], sig.args[1], types.intp)
    step_v = context.cast(builder, args[2], sig.args[2], types.intp)

    def row_at(k):
        at = builder.add(idx_v, builder.mul(step_v, ir.Constant(idx_v.type, k)))
        return builder.bitcast(builder.gep(data, [at]), row_type.as_pointer())
    rows = [shuffle(parts[0], parts[0], [p * n + k for p in range(cols)]) for k in range(n)]
    return rows, row_at


@intrinsic
def fma(typingctx, acc, s, v):
    """acc + s * v in every lane (s a scalar, cast to the lanes' dtype)."""
    if not (isinstance(acc, Lanes) and acc == v and isinstance(s, types.Number)):
        return None

    def codegen(context, builder, sig, args):
        vec = context.get_value_type(sig.args[0])
        scalar = context.cast(builder, args[1], sig.args[1], sig.args[0].dtype)
        return _fma_call(builder, vec, sig.args[0].dtype,
                         [_splat(builder, vec, scalar), args[2], args[0]])
    return acc(acc, s, v), codegen


@intrinsic
def fma_lanes(typingctx, acc, u, v):
    """acc + u * v, lane by lane (one fused multiply-add)."""
    if not (isinstance(acc, Lanes) and acc == u == v):
        return None

    def codegen(context, builder, sig, args):
        vec = context.get_value_type(sig.args[0])
        return _fma_call(builder, vec, sig.args[0].dtype, [args[1], args[2], args[0]])
    return acc(acc, u, v), codegen


@intrinsic
def splat(typingctx, ary, s):
    """The scalar s (cast to ary's dtype) in every lane."""
    if not (isinstance(ary, types.Array) and isinstance(ary.dtype, types.Float)
            and isinstance(s, types.Number)):
        return None
    lanes = Lanes(ary.dtype)

    def codegen(context, builder, sig, args):
        vec = context.get_value_type(lanes)
        scalar = context.cast(builder, args[1], sig.args[1], lanes.dtype)
        return _splat(builder, vec, scalar)
    return lanes(ary, s), codegen


@intrinsic
def add(typingctx, u, v):
    """u + v, lane by lane."""
    if not (isinstance(u, Lanes) and u == v):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return u(u, v), codegen


@intrinsic
def where_positive(typingctx, v, m):
    """v where m > 0, else 0, lane by lane (m NaN: 0)."""
    if not (isinstance(v, Lanes) and v == m):
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(context.get_value_type(sig.args[0]), None)
        return builder.select(builder.fcmp_ordered(">", args[1], zero), args[0], zero)
    return v(v, m), codegen


@intrinsic
def relu(typingctx, v):
    """0 where v <= 0, else v, lane by lane (a NaN stays NaN, as ``max(v, 0)`` in the
    scalar kernels)."""
    if not isinstance(v, Lanes):
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(context.get_value_type(sig.args[0]), None)
        return builder.select(builder.fcmp_ordered("<=", args[0], zero), zero, args[0])
    return v(v), codegen


@intrinsic
def zeros(typingctx, ary):
    """A vector of zeros of ary's dtype."""
    if not (isinstance(ary, types.Array) and isinstance(ary.dtype, types.Float)):
        return None
    lanes = Lanes(ary.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(lanes), None)
    return lanes(ary), codegen


@intrinsic
def lane(typingctx, v, k):
    """Lane k of v."""
    if not (isinstance(v, Lanes) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], args[1])
    return v.dtype(v, k), codegen


@intrinsic
def count(typingctx, ary):
    """How many lanes of ary's dtype one vector holds (a constant)."""
    if not (isinstance(ary, types.Array) and isinstance(ary.dtype, types.Float)):
        return None
    n = Lanes(ary.dtype).count

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(ary), codegen


@intrinsic
def _binary(typingctx, u, v, op):
    """u op v lane by lane (op a literal: "+", "-" or "*"); for "*", u a scalar of v's
    dtype or a vector like v."""
    if not (isinstance(v, Lanes) and isinstance(op, types.StringLiteral)
            and (u == v or (op.literal_value == "*" and u == v.dtype))):
        return None
    name = {"+": "fadd", "-": "fsub", "*": "fmul"}[op.literal_value]

    def codegen(context, builder, sig, args):
        left = args[0]
        if not isinstance(sig.args[0], Lanes):
            left = _splat(builder, context.get_value_type(sig.args[1]), left)
        return getattr(builder, name)(left, args[1])
    return v(u, v, op), codegen


@overload(operator.add)
def _add_lanes(u, v):
    if isinstance(u, Lanes) and u == v:
        return lambda u, v: _binary(u, v, "+")
    return None


@overload(operator.sub)
def _sub_lanes(u, v):
    if isinstance(u, Lanes) and u == v:
        return lambda u, v: _binary(u, v, "-")
    return None


@overload(operator.mul)
def _mul_lanes(u, v):
    if isinstance(v, Lanes) and u == v.dtype:
        return lambda u, v: _binary(u, v, "*")
    if isinstance(u, Lanes) and v == u.dtype:
        return lambda u, v: _binary(v, u, "*")
    return None
