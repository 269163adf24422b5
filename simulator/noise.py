"""Device non-idealities, each off by default and each drawing from its own seeded stream.

Streams are keyed by (seed, purpose, device key) -- the key of an MVMU being its layer and
its index within the layer (:meth:`Program.device_keys`) -- so turning one effect on never
changes the random numbers another effect sees, results do not depend on execution order
across MVMUs, and adding weight copies to one layer leaves every other MVMU's draws alone.
"""
from __future__ import annotations

import numpy as np

_VARIATION, _STUCK, _READ = 1, 2, 3


def _rng(cfg, purpose: int, key) -> np.random.Generator:
    return np.random.default_rng([cfg.noise.seed, purpose, *np.atleast_1d(key).tolist()])


def conductances(levels: np.ndarray, cfg, mvmu) -> np.ndarray | None:
    """Effective (float) cell levels of one MVMU after stuck-at faults, a finite on/off
    ratio and programming variation, in that order (variation acts on the conductance the
    cell really has), or None when all are off (then the integer levels are exact)."""
    nz = cfg.noise
    if not (nz.program_sigma or nz.stuck_on or nz.stuck_off or nz.on_off_ratio is not None):
        return None
    g = levels.astype(np.float64)
    top = (1 << cfg.xbar.cell_bits) - 1
    if nz.stuck_on or nz.stuck_off:
        # Stuck-off cells from the bottom of one uniform draw, stuck-on from its top: each
        # set grows nested in its own rate and stays put when the other rate changes.
        u = _rng(cfg, _STUCK, mvmu).random(levels.shape)
        g[u >= 1.0 - nz.stuck_on] = top
        g[u < nz.stuck_off] = 0.0
    g = _on_off(g, cfg)
    if nz.program_sigma:
        z = _rng(cfg, _VARIATION, mvmu).standard_normal(levels.shape)
        if nz.program_dist == "normal":
            # where g is 0 the factor may overflow to inf (a huge sigma): 0 stays 0, not NaN
            g = np.multiply(g, np.maximum(1.0 + nz.program_sigma * z, 0.0),
                            out=np.zeros_like(g), where=g != 0.0)
        else:
            g = g * np.exp(nz.program_sigma * z)
    return g


def _on_off(g: np.ndarray, cfg) -> np.ndarray:
    """Levels span G_off..G_on linearly; G_off = top / R in level units. Differential pairs
    cancel the offset (only the gain 1 - 1/R is left); offset mapping does not."""
    r = cfg.noise.on_off_ratio
    if r is None:
        return g
    return g * (1.0 - 1.0 / r) + ((1 << cfg.xbar.cell_bits) - 1) / r


def nominal_conductances(levels: np.ndarray, cfg) -> np.ndarray | None:
    """The float levels a cell is designed to conduct (the finite on/off ratio's G_off
    included; no fault, no variation): what a scale-mode ADC's span is set for. None when
    the on/off ratio is ideal (then the integer levels are nominal)."""
    if cfg.noise.on_off_ratio is None:
        return None
    return _on_off(levels.astype(np.float64), cfg)


def read_noise_rng(cfg, mvmu) -> np.random.Generator | None:
    """The read-noise stream of one MVMU (advances with each MVM it performs)."""
    return _rng(cfg, _READ, mvmu) if cfg.noise.read_sigma else None
