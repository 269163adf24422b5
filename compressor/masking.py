"""Frozen masks and fake quantization, installed as torch parametrizations.

During masked retraining each constrained weight is reparametrized as
``Q(original · mask)``: the mask keeps the pruned structure at exactly zero, and ``Q`` rounds
to the layer's levels with a straight-through gradient, so the network trains against the
weights it will finally have. :func:`snap` removes the parametrizations and writes the exact
final weights ``float32(q) · float32(scale)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class Frozen:
    """What is frozen for one layer: its keep mask and (optionally) its level set."""

    mask: np.ndarray
    """Boolean, torch layout of the weight; False entries are held at 0."""
    scale: float | None = None
    """Weight units per level; None = float weights (mask only)."""
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
    level set holds 0."""

    @staticmethod
    def forward(ctx, w, mask, scale, qmin, qmax, sign=None):
        ctx.save_for_backward(mask)
        out = torch.div(w, scale).round_().clamp_(qmin, qmax).mul_(scale).mul_(mask)
        return out if sign is None else _keep_sign_(out, sign)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None, None


def _keep_sign_(w: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """In place: entries of the wrong sign for ``sign`` (+-1) become 0."""
    return w.mul_(sign).clamp_(min=0).mul_(sign)


class MaskQuant(nn.Module):
    """Parametrization ``w -> Q(w · mask)``; ``Q`` is round-and-clip with a straight-through
    gradient when a scale is set, the identity otherwise."""

    def __init__(self, frozen: Frozen, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("mask", torch.as_tensor(frozen.mask, dtype=dtype), persistent=False)
        self.scale, self.qmin, self.qmax = frozen.scale, frozen.qmin, frozen.qmax
        if frozen.sign is None:
            self.sign = None
        else:  # +-1 (0 counts as +: those entries are masked anyway)
            self.register_buffer("sign", torch.as_tensor(np.where(frozen.sign < 0, -1, 1),
                                                         dtype=dtype), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            out = w * self.mask
            return out if self.sign is None else (out * self.sign).clamp(min=0) * self.sign
        return _MaskedLevels.apply(w, self.mask, self.scale, self.qmin, self.qmax, self.sign)


def install(model: nn.Module, frozen: dict[str, Frozen]) -> None:
    """Parametrize ``weight`` of each named module of ``model`` by its :class:`Frozen`."""
    modules = dict(model.named_modules())
    for name, f in frozen.items():
        m = modules[name]
        parametrize.register_parametrization(m, "weight", MaskQuant(f, m.weight.dtype))


def levels(weight: torch.Tensor, f: Frozen) -> np.ndarray | None:
    """Integer levels ``clip(round(weight · mask / scale))`` of a weight, or None unquantized."""
    if f.scale is None:
        return None
    # the retraining forward's own arithmetic (:class:`_MaskedLevels`: a divide in the
    # weight's dtype), so the snapped levels are the ones every retraining epoch, and the
    # epoch ``keep: best`` selects, was scored with; a float64 divide rounds the other way
    # for quotients within an ulp of a half level
    q = torch.div(weight.detach().cpu(), f.scale).round_().clamp_(f.qmin, f.qmax)
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
        q = levels(original, f)
        out[name] = q
        if q is None:
            value = original * torch.as_tensor(f.mask, dtype=original.dtype)
            if f.sign is not None:
                value = torch.as_tensor(_signed(value.numpy(), f.sign))
        else:
            value = torch.as_tensor(q.astype(np.float32) * np.float32(f.scale))
        with torch.no_grad():
            m.weight.copy_(value.to(m.weight.dtype))
    return out
