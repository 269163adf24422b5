"""What Conv, Gemm and MatMul share: quantize a weight matrix, fuse a following ReLU /
Clip, pick requantization constants, append the MVMLayer."""
import numpy as np

from ..errors import CompilerError, UnsupportedOpError
from ..ir import MVMLayer, multiplier, rescale_multiplier_bits
from ..quantize import coarsen_columns, quantize_weight
from .clip import clip_bounds, clipped_nonneg, integer_bounds


#: Most requantization multiplier bits of an MVM layer whose output is a QuantizeLinear's grid.
QDQ_MULTIPLIER_BITS = 30


def fuse_activation(node, ctx, out_name):
    """If the MVM output's only consumer is Relu or a constant Clip, fuse it.
    Returns (final output name, act, (lo, hi) real bounds or None)."""
    nxt = ctx.sole_consumer(out_name, ("Relu", "Clip"))
    if nxt is None:
        return out_name, None, None
    if nxt.op_type == "Relu":
        ctx.skip.add(nxt.name)
        return nxt.output[0], "relu", None
    try:
        bounds = clip_bounds(ctx, nxt)       # inputs, or attributes before opset 11
    except UnsupportedOpError:
        return out_name, None, None          # not constant: lower_clip refuses it
    ctx.skip.add(nxt.name)
    return nxt.output[0], None, bounds


def accumulator_bound(w_int: np.ndarray, in_bits: int) -> np.ndarray:
    """Per column, the largest |x @ w_int| over signed ``in_bits``-bit inputs (float)."""
    return np.abs(w_int).sum(axis=0) * 2.0 ** (in_bits - 1)


#: |acc + bias| a layer's columns are kept within: the VFU adds them in int64, before
#: requant_constants' pre-shift (whose rounding adds up to 2**61 more).
ACC_LIMIT = 2.0 ** 62


def fit_bias(w_int: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, in_scale: float,
             in_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w_int, w_scale, bias_int)`` with the real ``bias`` at the accumulator's step
    ``in_scale * w_scale``. A bias large against |x|max * |w|max passed int64 there (the
    cast gave INT64_MIN and the bias was lost); such a column's weight step is coarsened by
    a power of two until |acc + bias| fits ACC_LIMIT. The weight bits it drops lie far below
    the bias, which sets the output's range, so below the output's step."""
    steps = bias / (in_scale * w_scale)               # float: checked before the int64 cast
    if not np.isfinite(steps).all():
        raise CompilerError(f"its bias (up to {float(np.abs(bias).max()):.3g}) is no finite "
                            f"number of accumulator steps (down to "
                            f"{float(np.min(in_scale * w_scale)):.3g}); give finite biases "
                            f"and calibrate the input's range")
    top = accumulator_bound(w_int, in_bits) + np.abs(steps)
    if (top > ACC_LIMIT).any():
        k = np.maximum(0.0, np.ceil(np.log2(np.maximum(top, 1.0) / ACC_LIMIT)))
        w_int, w_scale = coarsen_columns(w_int, w_scale, w_scale * 2.0 ** k)
        steps = bias / (in_scale * w_scale)
    return w_int, w_scale, np.rint(steps).astype(np.int64)


def requant_constants(real, top: np.ndarray, bits: int
                      ) -> tuple[np.ndarray, int, int, int | None]:
    """``(mult, shift, pre_shift, pre_clip)`` of the requantization by ``real`` of sums
    bounded per column by ``top`` (:func:`sum_bound`), with ``bits``-bit multipliers.

    |acc + bias| * mult must fit int64 (the VFU multiplies before it shifts); with wide
    words it may not, and the product wrapped to the other sign. The sum is shifted first by
    what is missing (``pre_shift``); at 24-bit words that rounds below 1e-5 of an output
    step. Where no shift is left to spend (an output whose calibrated range is tiny next to
    its inputs', zero on every calibration sample), the shifted sum is first saturated to
    ``pre_clip`` bits, so the product saturates the output instead of wrapping."""
    mult, shift = multiplier(real, bits)
    need = float(np.max(top * mult, initial=0.0))
    pre_shift = min(shift, max(0, int(np.ceil(np.log2(need))) - 62)) if need > 0 else 0
    shift -= pre_shift
    m = float(np.max(np.abs(mult), initial=0.0))
    pre_clip = None
    if shift == 0 and m > 0 and float(np.max(top, initial=0.0)) / 2.0 ** pre_shift * m \
            >= 2.0 ** 62:
        pre_clip = max(2, 62 - int(np.ceil(np.log2(m))))   # |acc| < 2**(b-1): < 2**61
    return mult, shift, pre_shift, pre_clip


def sum_bound(w_int: np.ndarray, bias_int: np.ndarray, in_bits: int) -> np.ndarray:
    """Per column, the largest |acc + bias| over signed ``in_bits``-bit inputs (float)."""
    return accumulator_bound(w_int, in_bits) + np.abs(bias_int)


def _multiplier_bits(ctx, top: np.ndarray, grid: bool) -> int:
    """Requantization multiplier precision: the word's (:func:`rescale_multiplier_bits`);
    onto a QuantizeLinear's grid, as many bits (up to :data:`QDQ_MULTIPLIER_BITS`) as fit
    int64 beside the sums ``top`` with no pre-shift, since the Q rounds the exact product:
    15 bits' 6e-5 gain error put outputs a step from onnxruntime's (125 for 125.503), and 30
    with a pre-shift rounded the sum first (at 24-bit words, 7 outputs in 3072 off)."""
    bits = rescale_multiplier_bits(ctx.bits)
    if not grid:
        return bits
    room = 62 - int(np.ceil(np.log2(max(float(np.max(top, initial=1.0)), 1.0))))
    return int(np.clip(room, bits, QDQ_MULTIPLIER_BITS))


def add_mvm_layer(node, ctx, t_in, w_rows: np.ndarray, bias: np.ndarray | None,
                  out_shape, qdq=None, **geometry) -> MVMLayer:
    """Append ``y = act(requant(x @ w_rows + bias))`` with w_rows (K, N) float in the input
    memory gather order (conv: (ky, kx, c); fc: memory word order)."""
    out_name, act, bounds = fuse_activation(node, ctx, node.output[0])
    w_int, w_scale = quantize_weight(w_rows, ctx.wbits, qdq, ctx.cfg.xbar.mapping,
                                     f"{node.op_type} {node.name!r}")
    s_x = t_in.scale
    s_y = ctx.scale_for(out_name)
    if not w_int.any():
        # no live weight (a fully pruned layer): its scale only scales the bias, and the
        # quantizer's fallback of 1 rounded that to the input's step (a bias of 0.5 was
        # lost at |x| ~ 3e4); at the output's step it is exact to that step
        w_scale = np.full(w_int.shape[1], s_y / s_x)
    n = w_int.shape[1]
    b = np.zeros(n) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    w_int, w_scale, bias_int = fit_bias(w_int, w_scale, b, s_x, ctx.bits)
    grid = out_name in ctx.graph.act_scales
    top = sum_bound(w_int, bias_int, ctx.bits)
    mult, shift, pre_shift, pre_clip = requant_constants(
        s_x * w_scale / s_y, top, _multiplier_bits(ctx, top, grid))
    lo, hi = (None, None) if bounds is None else integer_bounds(*bounds, s_y, ctx.bits, grid)
    t_out = ctx.new_tensor(out_name, out_shape, s_y)
    if clipped_nonneg(lo, hi, act == "relu"):
        ctx.nonneg.add(out_name)
    layer = MVMLayer(node.name, node.op_type, [t_in.name], t_out.name, node=node.name,
                     weight=w_int, bias=bias_int, mult=mult, shift=shift,
                     out_bits=ctx.bits, pre_shift=pre_shift, pre_clip=pre_clip, act=act,
                     lo=lo, hi=hi,
                     w_scale=w_scale, **geometry)
    return ctx.add(layer)
