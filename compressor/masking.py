"""Frozen masks and fake quantization, installed as torch parametrizations.

During masked retraining each constrained weight is reparametrized as
``Q(original · mask)``: the mask keeps the pruned structure at exactly zero, and ``Q`` rounds
to the layer's levels with a straight-through gradient, so the network trains against the
weights it will finally have. :func:`snap` removes the parametrizations and writes the exact
final weights ``float32(q) · float32(scale)``.

A pruned ``nn.Linear`` whose kept crossbar tiles hold at most :data:`TILED_MAX_SHARE` of its
weight also computes tile by tile while it is installed (:class:`_TiledLinear`): the same
function and gradients, with work in proportion to the kept tiles instead of the whole
matrix (a 2048 x 2048 layer keeping 12 of 256 tiles: a retraining step of the benchmark's
VGG-style model took about half the time).
"""
from __future__ import annotations

import types
from dataclasses import dataclass, replace

import numba
import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

# A Linear layer computes tile by tile during masked retraining when its kept tiles hold at
# most this share of its weight and it has at least TILED_MIN_WEIGHTS weights (below that one
# dense GEMM costs less than a loop of small ones).
TILED_MAX_SHARE = 0.5
TILED_MIN_WEIGHTS = 1 << 16
# Bumped when masked retraining computes in another order: the same function, other float
# rounding, so other trajectories. 2: sparse Linear layers tile by tile (_TiledLinear).
RETRAIN_NUMERICS = 2


@dataclass(frozen=True)
class Frozen:
    """What is frozen for one layer: its keep mask and (optionally) its level set."""

    mask: np.ndarray
    """Boolean, torch layout of the weight; False entries are held at 0."""
    scale: float | np.ndarray | None = None
    """Weight units per level: one, or one per output channel (1-D, torch dim 0); None =
    float weights (mask only)."""
    qmin: int = 0
    """Lowest integer level."""
    qmax: int = 0
    """Highest integer level."""
    sign: np.ndarray | None = None
    """int8, torch layout, or None. Set for structures that count each sign on its own
    (``projections.SIGNED``): a kept entry keeps the sign it had when frozen (it is clamped
    at 0 instead of crossing), so retraining cannot move a weight to the other array."""


class _MaskedLevels(torch.autograd.Function):
    """``clip(round(w / scale)) · scale · mask`` forward, ``grad · mask`` backward (the
    straight-through estimator), in place on one buffer: the composed ops took half of a
    retraining step on a 4.6 M-weight model (profiled). Pruned entries are 0 because every
    level set holds 0. ``scale`` is a float or a tensor (one per output channel, shaped to
    broadcast over ``w``); a learned one (a tensor that requires grad) gets LSQ's gradient
    (:func:`_scale_grad`)."""

    @staticmethod
    def forward(ctx, w, mask, scale, qmin, qmax, sign=None):
        out = _levels_value(w, mask, scale, qmin, qmax)
        if sign is not None:
            out = _keep_sign_(out, sign)
        learned = isinstance(scale, torch.Tensor) and ctx.needs_input_grad[2]
        ctx.save_for_backward(mask, *((w, scale) if learned else ()))
        ctx.levels, ctx.sign = (qmin, qmax), sign
        return out

    @staticmethod
    def backward(ctx, grad):
        mask, *learned = ctx.saved_tensors
        gw = grad * mask
        gs = None
        if learned:
            gs = _scale_grad(gw, *learned, *ctx.levels, ctx.sign).to(learned[1].dtype)
        return gw, None, gs, None, None, None


def _levels_value(w, mask, scale, qmin, qmax) -> torch.Tensor:
    """``clip(round(w / scale)) · scale · mask`` as a new tensor (``w · mask`` if no scale)."""
    if scale is None:
        return w * mask
    return torch.div(w, scale).round_().clamp_(qmin, qmax).mul_(scale).mul_(mask)


def _scale_grad(gw, w, s, qmin, qmax, sign=None) -> torch.Tensor:
    """LSQ's gradient of the loss in a learned scale ``s`` (Esser et al. 2020): ``Σ grad ·
    ∂out/∂s`` for ``out = clip(round(w / s)) · s · mask`` with the rounding passed straight
    through, where ``∂out/∂s`` is ``round(w/s) − w/s`` inside the level range and the
    clipped level outside it (0 where masked, ``gw = grad · mask`` = 0, or held at 0 by
    ``sign``); float64, shaped as ``s`` (a sum per output channel for a per-channel scale).
    One numba pass (:func:`_lsq_sum`): as torch ops it took half again a retraining step of
    the benchmark's VGG-style model; this adds about a seventh."""
    w = _as_2d(w)
    signed = sign is not None
    # the forward's division: w / s in the weight's dtype
    rows = s.detach().reshape(-1).numpy().astype(w.dtype)
    total = _lsq_sum(_as_2d(gw), w, _as_2d(sign) if signed else w, signed, rows, qmin, qmax)
    return torch.from_numpy(total).reshape(s.shape)


def _as_2d(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t`` (2-D; a conv weight's trailing dimensions flattened)."""
    t = t.detach()
    return (t if t.dim() == 2 else t.reshape(t.shape[0], -1)).numpy()


@numba.njit(cache=True)
def _lsq_sum(gw, w, sign, signed, s, qmin, qmax):
    """``Σ gw · slope`` of :func:`_scale_grad` (``sign`` read only where ``signed``): ``s``
    holds one scale, or one per row (output channel) with a sum per row. One thread: the
    torch threads are busy around it (and measured no slower than a parallel loop)."""
    n, m = w.shape
    per_row = s.shape[0] == n and n > 1
    acc = np.zeros(s.shape[0])
    for i in range(n):
        r_i = i if per_row else 0
        si = s[r_i]
        for j in range(m):
            g = gw[i, j]
            if g == 0.0:
                continue
            r = w[i, j] / si
            q = min(max(np.rint(r), qmin), qmax)
            if signed and q * sign[i, j] < 0:
                continue
            acc[r_i] += g * (q - r if qmin <= r <= qmax else q)
    return acc


def _keep_sign_(w: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """In place: entries of the wrong sign for ``sign`` (+-1) become 0."""
    return w.mul_(sign).clamp_(min=0).mul_(sign)


class MaskQuant(nn.Module):
    """Parametrization ``w -> Q(w · mask)``; ``Q`` is round-and-clip with a straight-through
    gradient when a scale is set, the identity otherwise. With ``learn_scale`` the scale is
    ``frozen.scale · exp(log_gain)``, ``log_gain`` a parameter trained with the weights (0 at
    install, so retraining starts on the hard projection's levels)."""

    def __init__(self, frozen: Frozen, dtype: torch.dtype, learn_scale: bool = False):
        super().__init__()
        # (out, in) slices of the kept tiles, set by install() where the layer is tiled
        self.tiles: list[tuple[slice, slice]] = []
        self.register_buffer("mask", torch.as_tensor(frozen.mask, dtype=dtype), persistent=False)
        self.scale, self.qmin, self.qmax = frozen.scale, frozen.qmin, frozen.qmax
        # per channel: a float32 tensor shaped to broadcast over the weight (float32 whatever
        # the weight's dtype: the scale stays float32-representable, how it is stored, and a
        # float64 weight divides by it exactly)
        channels = np.ndim(frozen.scale) == 1
        if channels:
            self.register_buffer("scale_t", scale_divisor(frozen.scale, frozen.mask.ndim),
                                 persistent=False)
        else:
            self.scale_t = None
        self.log_gain = (nn.Parameter(torch.zeros(self.scale_t.shape if channels else (),
                                                  dtype=torch.float32))
                         if learn_scale and frozen.scale is not None else None)
        if frozen.sign is None:
            self.sign = None
        else:  # +-1 (0 counts as +: those entries are masked anyway)
            self.register_buffer("sign", torch.as_tensor(np.where(frozen.sign < 0, -1, 1),
                                                         dtype=dtype), persistent=False)

    def level_scale(self) -> float | torch.Tensor | None:
        """The scale in use: the frozen float or per-channel tensor, or the learned tensor
        (with its graph)."""
        base = self.scale if self.scale_t is None else self.scale_t
        return base if self.log_gain is None else base * self.log_gain.exp()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            out = w * self.mask
            return out if self.sign is None else (out * self.sign).clamp(min=0) * self.sign
        return _MaskedLevels.apply(w, self.mask, self.level_scale(), self.qmin, self.qmax,
                                   self.sign)


def kept_tiles(mask: np.ndarray, rows: int, cols: int) -> list[tuple[slice, slice]]:
    """``(out, in)`` slices of the ``cols × rows`` tiles of a Linear weight's ``mask`` (torch
    layout) that keep any weight: the crossbars (``rows`` inputs × ``cols`` outputs) that
    hold it, edge tiles partial, in row-major order."""
    n_out, n_in = mask.shape
    return [(slice(o, min(o + cols, n_out)), slice(i, min(i + rows, n_in)))
            for o in range(0, n_out, cols) for i in range(0, n_in, rows)
            if mask[o:o + cols, i:i + rows].any()]


class _TiledLinear(torch.autograd.Function):
    """``x · Q(W)ᵀ + b`` summed over the kept ``tiles`` (``(out, in)`` slices) only, with
    :class:`_MaskedLevels`' gradients (``grad · mask`` for W, LSQ's for a learned scale;
    zero outside the tiles, where the mask is)."""

    @staticmethod
    def forward(ctx, x, w, bias, mask, tiles, scale, qmin, qmax):
        y = (x.new_zeros(x.shape[0], w.shape[0]) if bias is None
             else bias.expand(x.shape[0], -1).clone())
        values = []
        for o, i in tiles:
            v = _levels_value(w[o, i], mask[o, i], _rows(scale, o), qmin, qmax)
            y[:, o].addmm_(x[:, i], v.t())
            values.append(v)
        learned = isinstance(scale, torch.Tensor) and ctx.needs_input_grad[5]
        ctx.save_for_backward(x, mask, *((w, scale) if learned else (None, None)), *values)
        ctx.tiles, ctx.w_shape, ctx.has_bias = tiles, w.shape, bias is not None
        ctx.levels = (qmin, qmax)
        return y

    @staticmethod
    @once_differentiable    # the saved levels are cut off from w: no second derivative
    def backward(ctx, grad):
        x, mask, w, s, *values = ctx.saved_tensors
        gx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        gw = grad.new_zeros(ctx.w_shape) if ctx.needs_input_grad[1] else None
        gs = None if s is None else torch.zeros(s.shape, dtype=torch.float64)
        for (o, i), v in zip(ctx.tiles, values):
            g = grad[:, o]
            if gx is not None:
                gx[:, i].addmm_(g, v)
            if gw is None and gs is None:
                continue
            gv = torch.mm(g.t(), x[:, i])   # gradient of the tile's values
            gm = gv * mask[o, i]
            if gs is not None:
                # per channel: the tile's rows of it
                (gs[o] if s.dim() else gs).add_(_scale_grad(gm, w[o, i], _rows(s, o),
                                                            *ctx.levels))
            if gw is not None:
                gw[o, i] = gm
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None if gs is None else gs.to(s.dtype), None, None


def _rows(scale, o: slice):
    """The part of ``scale`` for output rows ``o``: all of a single one, else its rows."""
    return scale[o] if isinstance(scale, torch.Tensor) and scale.dim() else scale


def broadcast_scale(scale, ndim: int) -> np.ndarray | float:
    """A per-channel ``scale`` (1-D) shaped ``(C, 1, ...)`` to broadcast over a weight of
    ``ndim`` dimensions; a single one as it is."""
    return scale.reshape((-1,) + (1,) * (ndim - 1)) if np.ndim(scale) == 1 else scale


def scale_divisor(scale, ndim: int) -> torch.Tensor | float:
    """What the retraining forward divides a weight of ``ndim`` dimensions by: a single
    scale as it is, a per-channel one as a float32 tensor that broadcasts (float32 whatever
    the weight's dtype, as the scale is stored)."""
    if np.ndim(scale) == 0:
        return scale
    return torch.as_tensor(broadcast_scale(scale, ndim), dtype=torch.float32)


def _tiled_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``forward`` of a Linear installed tile by tile (bound to the module by install())."""
    p = self.parametrizations.weight
    q = p[0]
    y = _TiledLinear.apply(x.reshape(-1, x.shape[-1]), p.original, self.bias, q.mask,
                           q.tiles, q.level_scale(), q.qmin, q.qmax)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def install(model: nn.Module, frozen: dict[str, Frozen],
            tile: tuple[int, int] | None = None, learn_scale: frozenset[str] = frozenset()
            ) -> None:
    """Parametrize ``weight`` of each named module of ``model`` by its :class:`Frozen`.

    With ``tile = (rows, cols)`` (the crossbar's), a sparse ``nn.Linear`` (module doc) also
    computes tile by tile until :func:`snap`; its parametrized ``weight`` is unchanged. The
    quantized layers named in ``learn_scale`` train their scale (:class:`MaskQuant`);
    :func:`learned_scales` reads it back before :func:`snap`.
    """
    modules = dict(model.named_modules())
    for name, f in frozen.items():
        m = modules[name]
        quant = MaskQuant(f, m.weight.dtype, name in learn_scale)
        parametrize.register_parametrization(m, "weight", quant)
        # only a plain Linear (a subclass may compute more than x·Wᵀ + b); not a signed
        # layer (its sign clamp is not in the tiled forward)
        if tile is None or type(m).forward is not nn.Linear.forward or f.sign is not None \
                or f.mask.size < TILED_MIN_WEIGHTS:
            continue
        kept = kept_tiles(f.mask, *tile)
        if sum((o.stop - o.start) * (i.stop - i.start)
               for o, i in kept) > TILED_MAX_SHARE * f.mask.size:
            continue
        quant.tiles = kept
        m.forward = types.MethodType(_tiled_forward, m)


def learned_scales(model: nn.Module, frozen: dict[str, Frozen]) -> dict[str, Frozen]:
    """``frozen`` with each learned scale (:class:`MaskQuant`) replaced by its current value
    (float32, as the retraining forward computed it), ready for :func:`snap`."""
    modules = dict(model.named_modules())
    out = dict(frozen)
    for name, f in frozen.items():
        q = modules[name].parametrizations.weight[0]
        if q.log_gain is not None:
            with torch.no_grad():
                s = q.level_scale()
                out[name] = replace(f, scale=(s.reshape(-1).double().numpy() if s.dim()
                                              else float(s)))
    return out


def levels(weight: torch.Tensor, f: Frozen) -> np.ndarray | None:
    """Integer levels ``clip(round(weight · mask / scale))`` of a weight, or None unquantized."""
    if f.scale is None:
        return None
    # the retraining forward's own arithmetic (:class:`_MaskedLevels`: a divide in the
    # weight's dtype), so the snapped levels are the ones every retraining epoch, and the
    # epoch ``keep: best`` selects, was scored with; a float64 divide rounds the other way
    # for quotients within an ulp of a half level
    q = torch.div(weight.detach().cpu(), scale_divisor(f.scale, weight.dim()))
    q = q.round_().clamp_(f.qmin, f.qmax)
    q = q.numpy().astype(np.int64) * f.mask
    return q if f.sign is None else _signed(q, f.sign)


def _signed(a: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """``a`` with entries of the wrong sign for ``sign`` set to 0 (numpy)."""
    return np.where(sign < 0, np.minimum(a, 0), np.maximum(a, 0))


def snap(model: nn.Module, frozen: dict[str, Frozen]) -> dict[str, np.ndarray | None]:
    """Remove the parametrizations, leaving each weight at its exact final value.

    Quantized layers get ``float32(q) · float32(scale)`` (what a DequantizeLinear computes);
    mask-only layers get ``original · mask``. Returns ``{name: q}`` (int64, or None).
    """
    modules = dict(model.named_modules())
    out = {}
    for name, f in frozen.items():
        m = modules[name]
        original = m.parametrizations.weight.original.detach()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        m.__dict__.pop("forward", None)     # back to the class's forward if install tiled it
        q = levels(original, f)
        out[name] = q
        if q is None:
            value = original * torch.as_tensor(f.mask, dtype=original.dtype)
            if f.sign is not None:
                value = torch.as_tensor(_signed(value.numpy(), f.sign))
        else:
            value = torch.as_tensor(q.astype(np.float32) * np.float32(
                broadcast_scale(f.scale, q.ndim)))
        with torch.no_grad():
            m.weight.copy_(value.to(m.weight.dtype))
    return out
