"""Fixed-point helpers the activation ops share: each VFU step defined once for the emitted
instructions and once for the numpy reference, side by side so they cannot drift apart."""
import numpy as np

from simulator.functional import alu
from simulator.isa import Fn, Op

from ..ir import multiplier

MULT_BITS = 20   # multiplier precision for VFU rescales of 16-bit values (products < 2**40)


def ratio(real: float, bits: int = MULT_BITS) -> tuple[int, int]:
    """(mult, shift) with mult * 2**-shift ~= real; an exact 1 stays (1, 0)."""
    if real == 1.0:
        return 1, 0
    m, shift = multiplier(real, bits)
    return int(m[0]), shift


def emit_mul_shift(em, r: int, n: int, mult: int, shift: int, layer: int,
                   even: bool = False) -> None:
    """r <- (r * mult) >>r shift, no saturation (an intermediate, not a stored word);
    ``even``: rounding half to even."""
    if mult != 1:
        em.emit(Op.ALUI, fn=Fn.MUL, dst=r, src1=r, imm=mult, vec=n, layer=layer)
    if shift:
        em.emit(Op.ALUI, fn=Fn.SHRE if even else Fn.SHR, dst=r, src1=r, imm=shift, vec=n,
                layer=layer)


def mul_shift_ref(x: np.ndarray, mult: int, shift: int, even: bool = False) -> np.ndarray:
    y = x * mult if mult != 1 else x
    return alu(Fn.SHRE if even else Fn.SHR, y, shift, 0) if shift else y


def frac_bits(*scales: float, lo: int = 16, hi: int = 30) -> int:
    """Fraction bits for a fixed-point intermediate fine enough for the given scales (a few
    bits below the finest), within [lo, hi]."""
    finest = min(scales)
    return int(np.clip(np.ceil(-np.log2(finest)) + 4, lo, hi))
