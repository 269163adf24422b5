"""ADMM splitting for per-layer weight constraints (Zhang et al. ECCV 2018; Ren et al. 2019).

Problem: ``min loss(W)`` subject to ``W_i ∈ S_i`` for each constrained layer ``i``. With an
auxiliary ``Z_i ∈ S_i`` and the scaled dual ``U_i`` the augmented Lagrangian gives

* W-step: a few epochs of SGD/Adam on ``loss(W) + Σ ρ/2 ‖W_i − Z_i + U_i‖²`` — the *squared*
  Frobenius norm, whose gradient is ``ρ (W_i − Z_i + U_i)`` (:meth:`ADMM.penalty`; training
  adds that gradient directly, :meth:`ADMM.add_penalty_grad`, with no autograd graph);
  Or, with ``penalty: proximal``, the penalty's exact proximal step after each optimizer
  step on the loss alone (:meth:`ADMM.proximal_step`; see :class:`~.recipes.AdmmSpec`);
* Z-step: ``Z_i = Π_{S_i}(W_i + U_i)``, the Euclidean projection (:meth:`ADMM.update`);
* U-step: ``U_i += W_i − Z_i``.

ρ grows between rounds; since ``U`` is the dual scaled by ``1/ρ`` it is rescaled by
``ρ_old / ρ_new`` when ρ changes (Boyd et al. 2011, §3.4.1), so the unscaled dual is kept.
"""
from __future__ import annotations

import torch
from torch import nn

from .connectivity import project_layers
from .constraints import Constraint
from .geometry import CrossbarGeometry


class ADMM:
    """Auxiliary and dual variables of every constrained layer, and ρ.

    ``layers`` maps module names of ``model`` to their :class:`Constraint`; it may be
    replaced between rounds (progressive ADMM tightens the targets). ``Z`` starts at the
    projection of the current weights and ``U`` at zero.
    """

    def __init__(self, model: nn.Module, layers: dict[str, Constraint],
                 geometry: CrossbarGeometry, rho: float, feeds: dict[str, str] | None = None,
                 views: dict[str, tuple[int, ...]] | None = None):
        modules = dict(model.named_modules())
        self.weights = {n: modules[n].weight for n in layers}
        self.layers, self.geometry, self.rho = layers, geometry, float(rho)
        # {consumer: producer}: the Z-step keeps each chain connected (compressor.connectivity)
        self.feeds = feeds or {}
        # {name: shape}: layers whose crossbars read the weight as that (compressor.layout)
        self.views = views or {}
        self.keep: dict = {}  # {name: the structure's keep mask of Z} (numpy bool)
        self.Z = self._project({n: w.detach() for n, w in self.weights.items()})
        self.U = {n: torch.zeros_like(w.detach()) for n, w in self.weights.items()}
        self._shift = None  # ρ (U − Z), cached by add_penalty_grad; None when Z, U or ρ change
        self._anchor = None  # Z − U, cached by proximal_step; None when Z or U change
        self.moved: dict[str, float] = {}  # per layer, support new at the last Z-step

    def _project(self, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = project_layers(self.layers, targets, self.geometry, self.feeds, self.views)
        self.keep = {n: v[2] for n, v in out.items()}
        return {n: v[0] for n, v in out.items()}

    def penalty(self) -> torch.Tensor:
        """``Σ ρ/2 ‖W − Z + U‖²`` over the layers (differentiable in ``W``)."""
        total = 0.0
        for n, w in self.weights.items():
            total = total + (w - self.Z[n] + self.U[n]).pow(2).sum()
        return 0.5 * self.rho * total

    @torch.no_grad()
    def add_penalty_grad(self) -> None:
        """Add the penalty's gradient ``ρ (W − Z + U)`` to each weight's ``.grad`` (after
        ``backward`` of the loss alone): the same W-step as ``(loss + penalty()).backward()``
        without a graph, in place, with ``ρ (U − Z)`` formed once per round (temporaries of a
        4 M-weight layer on every step were a third of an ADMM step, profiled)."""
        if self._shift is None:
            self._shift = {n: (self.U[n] - self.Z[n]).mul_(self.rho) for n in self.weights}
        for n, w in self.weights.items():
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            w.grad.add_(w, alpha=self.rho).add_(self._shift[n])

    @torch.no_grad()
    def proximal_step(self, lr: float) -> None:
        """The exact minimizer over ``W`` of ``ρ/2 ‖W − Z + U‖² + ‖W − W₀‖² / (2 lr)``:
        ``W ← (W + lr ρ (Z − U)) / (1 + lr ρ)``, in place (after the optimizer's step)."""
        if self._anchor is None:
            self._anchor = {n: self.Z[n] - self.U[n] for n in self.weights}
        pull = lr * self.rho / (1.0 + lr * self.rho)
        for n, w in self.weights.items():
            w.lerp_(self._anchor[n], pull)

    @torch.no_grad()
    def update(self) -> dict[str, float]:
        """Z- and U-steps. Returns the relative primal residual ``‖W − Z‖ / ‖W‖`` per layer;
        sets :attr:`moved`, per layer the share of the structure's new keep mask that the
        old one did not keep (0: the Z-step kept the support it had, only the values moved;
        a weight kept but quantized to 0 still counts as kept)."""
        residual, self._shift, self._anchor = {}, None, None
        before = self.keep
        self.Z = self._project({n: w + self.U[n] for n, w in self.weights.items()})
        self.moved = {n: float((k & ~before[n]).sum() / max(int(k.sum()), 1))
                      for n, k in self.keep.items()}
        for n, w in self.weights.items():
            self.U[n] += w - self.Z[n]
            residual[n] = float((w - self.Z[n]).norm() / w.norm().clamp_min(1e-12))
        return residual

    def set_rho(self, rho: float) -> None:
        """Change ρ, rescaling the scaled dual so the unscaled one is unchanged."""
        for u in self.U.values():
            u.mul_(self.rho / rho)
        self.rho, self._shift, self._anchor = float(rho), None, None

    def state_dict(self) -> dict:
        return {"rho": self.rho, "Z": dict(self.Z), "U": dict(self.U),
                "keep": {n: torch.from_numpy(k) for n, k in self.keep.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.rho = float(state["rho"])
        self.Z = {n: state["Z"][n].clone() for n in self.weights}
        self.U = {n: state["U"][n].clone() for n in self.weights}
        # the keep masks ``moved`` compares with (checkpoints from before they were saved:
        # Z's nonzeros, which miss only kept weights at level 0)
        keep = state.get("keep") or {n: z != 0 for n, z in self.Z.items()}
        self.keep = {n: keep[n].numpy().copy() for n in self.weights}
        self._shift = self._anchor = None
