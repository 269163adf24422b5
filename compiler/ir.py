"""The compiler's layer IR: quantized tensors and the layers between them.

After lowering, a model is a list of :class:`Layer` in topological order over named
:class:`TensorInfo`. Every tensor is fixed point (real = integer * ``scale``) and has a
memory layout:

* ``map``: a feature map (H, W, C) stored channel-last with a padded border; word
  (y, x, c) lives at ``((y + pad_top) * Wp + x + pad_left) * C + c``;
* ``vec``: F words in a row; ``perm[i]`` is the logical (C-order) index of memory word i
  (None = identity). Flattening a map gives a vec whose perm records the (H, W, C) order, so
  a following Gemm permutes its weight rows instead of moving data.

Integer semantics of every layer are defined twice: by ``reference`` (numpy, on the
unpadded memory-order arrays) and by the instructions its codegen emits; tests check the
simulator against the former.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn

from .errors import UnsupportedOpError


@dataclass
class TensorInfo:
    name: str
    kind: str                       # "map" | "vec"
    shape: tuple                    # logical ONNX shape, batch 1 included
    scale: float = 1.0              # real value = integer * scale
    H: int = 1
    W: int = 1
    C: int = 1
    F: int = 1
    pad: tuple = (0, 0, 0, 0)       # top, left, bottom, right (map)
    pad_value: int = 0
    perm: np.ndarray | None = None  # vec: memory index -> logical index
    alias_of: str | None = None     # shares the memory of another tensor
    cperm: np.ndarray | None = None
    """map: stored channel k holds logical channel cperm[k] (None = identity). Only a
    channel shuffle aliased into its Conv consumers has one; those permute weight rows."""

    @property
    def size(self) -> int:
        return self.H * self.W * self.C if self.kind == "map" else self.F

    @property
    def Hp(self) -> int:
        return self.H + self.pad[0] + self.pad[2]

    @property
    def Wp(self) -> int:
        return self.W + self.pad[1] + self.pad[3]

    @property
    def words(self) -> int:
        return self.Hp * self.Wp * self.C if self.kind == "map" else self.F

    def offset(self, y: int, x: int, c: int = 0) -> int:
        """Word offset of (y, x, c) within the (padded) buffer."""
        return ((y + self.pad[0]) * self.Wp + x + self.pad[1]) * self.C + c

    def to_logical(self, mem: np.ndarray) -> np.ndarray:
        """Batch of unpadded memory-order integers (B, words...) -> logical ONNX layout."""
        B = mem.shape[0]
        if self.kind == "map":
            hwc = mem.reshape(B, self.H, self.W, self.C)
            if self.cperm is not None:
                out = np.empty_like(hwc)
                out[..., self.cperm] = hwc
                hwc = out
            return np.transpose(hwc, (0, 3, 1, 2)).reshape((B,) + tuple(self.shape[1:]))
        flat = mem.reshape(B, -1)
        if self.perm is not None:
            out = np.empty_like(flat)
            out[:, self.perm] = flat
            flat = out
        return flat.reshape((B,) + tuple(self.shape[1:]))

    def from_logical(self, x: np.ndarray) -> np.ndarray:
        """Logical batch (B, ...) -> memory order (B, H, W, C) or (B, F)."""
        B = x.shape[0]
        if self.kind == "map":
            chw = x.reshape(B, self.C, self.H, self.W)
            if self.cperm is not None:
                chw = chw[:, self.cperm]
            return np.transpose(chw, (0, 2, 3, 1))
        flat = x.reshape(B, -1)
        return flat[:, self.perm] if self.perm is not None else flat


@dataclass
class Layer:
    """Base of every layer. ``inputs``/``output`` are tensor names."""

    name: str
    op: str
    inputs: list[str]
    output: str
    node: str = ""                  # the ONNX node it came from
    # its output lies on a QuantizeLinear's grid (the Q's scale, or the Q itself): its last
    # rounding is half to even, as ONNX's Q rounds (half up made exact ties one step off)
    round_even: bool = False

    kind = "vfu"

    def reference(self, ins: list[np.ndarray], tensors: dict) -> np.ndarray:
        raise NotImplementedError


@dataclass
class MVMLayer(Layer):
    """y = requant(x_patches @ weight + bias): a Conv (im2col) or a fully connected layer.

    ``weight``: integer matrix (K, N); row k is input word ``rows_offset[k]`` relative to the
    pixel's base address (conv) or memory word k (fc); column n is output channel n.
    Requantization: acc -> clip((acc * mult[n] + 2**(shift-1)) >> shift, out_bits), then
    ``act`` (None | "relu"), then ``lo``/``hi`` bounds (fused Clip). With wide words, where
    ``acc * mult`` could leave int64, ``acc`` is first shifted right (rounding) by
    ``pre_shift`` and ``shift`` is what remains."""

    weight: np.ndarray = None
    bias: np.ndarray = None         # (N,) int64 at scale in_scale * w_scale
    mult: np.ndarray = None         # (N,) int64
    shift: int = 0
    out_bits: int = 16
    pre_shift: int = 0
    pre_clip: int | None = None     # bits the shifted sum saturates to before the multiply
    act: str | None = None
    lo: int | None = None
    hi: int | None = None
    # conv geometry (fc: all ones / zeros and Ho = Wo = 1)
    kh: int = 1
    kw: int = 1
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    conv_pad: tuple = (0, 0, 0, 0)
    Ho: int = 1
    Wo: int = 1
    is_conv: bool = False
    w_scale: np.ndarray | float = 1.0

    kind = "mvm"

    def row_offsets(self, t_in: TensorInfo) -> np.ndarray:
        """Word offset of each weight row relative to the receptive field's base address
        (conv: window top-left in the padded input buffer; fc: word index)."""
        if not self.is_conv:
            return np.arange(self.weight.shape[0], dtype=np.int64)
        C = t_in.C
        ky, kx, c = np.meshgrid(np.arange(self.kh), np.arange(self.kw), np.arange(C),
                                indexing="ij")
        return ((ky * self.dilation[0] * t_in.Wp + kx * self.dilation[1]) * C + c).reshape(-1)

    def base_offset(self, t_in: TensorInfo, oy: int = 0, ox: int = 0) -> int:
        """Offset of output pixel (oy, ox)'s window origin in the padded input buffer."""
        if not self.is_conv:
            return 0
        y = oy * self.stride[0] - self.conv_pad[0] + t_in.pad[0]
        x = ox * self.stride[1] - self.conv_pad[1] + t_in.pad[1]
        return (y * t_in.Wp + x) * t_in.C

    def requant(self, acc: np.ndarray) -> np.ndarray:
        if self.pre_shift:
            acc = (acc + (1 << (self.pre_shift - 1))) >> self.pre_shift
        if self.pre_clip:
            lim = 1 << (self.pre_clip - 1)
            acc = np.clip(acc, -lim, lim - 1)
        return requantize(acc, self.mult, self.shift, self.out_bits, self.act, self.lo, self.hi,
                          self.round_even)

    def reference(self, ins, tensors):
        t_in = tensors[self.inputs[0]]
        x = ins[0]
        B = x.shape[0]
        if self.is_conv:
            buf = padded(x, t_in)                               # (B, words)
            offs = self.row_offsets(t_in)
            bases = np.array([self.base_offset(t_in, oy, ox) for oy in range(self.Ho)
                              for ox in range(self.Wo)], np.int64)
            patches = buf[:, bases[:, None] + offs[None, :]]   # (B, P, K)
            acc = patches.reshape(-1, len(offs)) @ self.weight
            acc = acc.reshape(B, self.Ho * self.Wo, -1)
        else:
            acc = x.reshape(B, -1) @ self.weight
        return self.requant(acc + self.bias).reshape(B, -1)


def round_shift(y, shift: int, even: bool = False):
    """y >> shift rounded as the VFU's shr (half up) or, with ``even``, shre (half to even)."""
    if shift <= 0:
        return y
    if even:
        return alu(Fn.SHRE, np.asarray(y, np.int64), shift, 0)
    return (y + (1 << (shift - 1))) >> shift


def requantize(acc, mult, shift, bits, act=None, lo=None, hi=None, even=False):
    """The VFU's requantization sequence, in numpy: mul, rounding shift, clip, activation."""
    y = round_shift(acc * mult, shift, even)
    lim = 1 << (bits - 1)
    y = np.clip(y, -lim, lim - 1)
    if act == "relu":
        y = np.maximum(y, 0)
    if lo is not None:
        y = np.maximum(y, lo)
    if hi is not None:
        y = np.minimum(y, hi)
    return y


def padded(x: np.ndarray, t: TensorInfo) -> np.ndarray:
    """Unpadded memory-order batch (B, H*W*C) -> padded buffer contents (B, words)."""
    B = x.shape[0]
    if t.kind != "map":
        return x.reshape(B, -1)
    buf = np.full((B, t.Hp, t.Wp, t.C), t.pad_value, np.int64)
    buf[:, t.pad[0]:t.pad[0] + t.H, t.pad[1]:t.pad[1] + t.W] = x.reshape(B, t.H, t.W, t.C)
    return buf.reshape(B, -1)


def node_attrs(node) -> dict:
    """An ONNX node's attributes as {name: python value}."""
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def quantized_elem_type(node, zero_point) -> int:
    """ONNX element type of a QuantizeLinear's output: its zero point's type; without one,
    its ``output_dtype`` (opset 21), else uint8 (the spec's default)."""
    from onnx import TensorProto, helper
    if zero_point is not None:
        return helper.np_dtype_to_tensor_dtype(np.asarray(zero_point).dtype)
    return int(node_attrs(node).get("output_dtype", 0)) or TensorProto.UINT8


AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def explicit_pads(a: dict, kernel, sizes) -> dict:
    """Conv/pool attributes ``a`` with ``auto_pad`` turned into the explicit ``pads`` the
    ONNX spec defines, so lowering reads one form. ``kernel`` and ``sizes`` (the input's
    spatial sizes) are per spatial axis. SAME_*: output = ceil(size / stride), the total
    padding split in half with the odd unit at the end (UPPER) or the start (LOWER)."""
    mode = a.get("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode == "NOTSET":
        return a
    if mode not in AUTO_PADS:
        raise UnsupportedOpError(f"auto_pad={mode!r}: allowed {', '.join(AUTO_PADS)}")
    n = len(kernel)
    begin, end = [0] * n, [0] * n
    if mode != "VALID":
        strides = list(a.get("strides", [1] * n))
        dil = list(a.get("dilations", [1] * n))
        for i in range(n):
            out = -(-int(sizes[i]) // strides[i])
            total = max(0, (out - 1) * strides[i] + (int(kernel[i]) - 1) * dil[i] + 1
                        - int(sizes[i]))
            begin[i] = total // 2 if mode == "SAME_UPPER" else total - total // 2
            end[i] = total - begin[i]
    return {**{k: v for k, v in a.items() if k != "auto_pad"}, "pads": begin + end}


#: Largest right shift a rescaling uses (the VFU's words are 64-bit).
MAX_SHIFT = 62


def rescale_multiplier_bits(word_bits: int, terms: int = 1) -> int:
    """Precision of the multipliers that move values of ``word_bits``-bit words to another
    scale: 15 bits up to 16-bit words, then one below the word (15 bits put a ~3e-5 gain
    error on every rescale, so 24-bit words were no more accurate than 16-bit ones). A VFU
    rescale multiplies a sum of up to ``terms`` words before it shifts: fewer bits where
    that product could leave int64 (at 16-bit words, only past 2**32 terms). An MVM's
    product with its accumulator is kept inside int64 by
    :func:`compiler.ops._mvm.requant_constants` instead."""
    room = 63 - word_bits - int(np.ceil(np.log2(max(terms, 1))))
    return min(max(15, word_bits - 1), room)


def multiplier(real: np.ndarray | float, bits: int = 15) -> tuple[np.ndarray, int]:
    """Integer multipliers and one shared right shift with mult * 2**-shift ~= real.
    The largest multiplier gets ``bits`` bits of precision."""
    real = np.atleast_1d(np.asarray(real, np.float64))
    top = float(np.abs(real).max())
    if top == 0:
        return np.zeros(real.shape, np.int64), 0
    if not np.isfinite(top) or top >= 2.0 ** 46:
        from .errors import CompilerError
        raise CompilerError(f"a rescaling factor of {top:.3g} does not fit the VFU's 64-bit "
                            f"multiply; an activation range is degenerate (check the "
                            f"calibration inputs)")
    shift = int(np.floor(bits - 1 - np.log2(top)))
    # at most 62: a 64-bit shift by 63 or more wraps (x86 takes it mod 64); a factor that
    # small makes every product round to 0 anyway, which multipliers of 0 then give
    shift = min(max(shift, 0), MAX_SHIFT)
    m = np.rint(real * (2.0 ** shift)).astype(np.int64)
    return m, shift


@dataclass
class LayerProgram:
    """The lowered model: tensors, layers, graph inputs/outputs."""

    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    input_bits: int = 16

    def storage(self, name: str) -> str:
        """The tensor whose memory ``name`` lives in (following aliases)."""
        t = self.tensors[name]
        while t.alias_of is not None:
            t = self.tensors[t.alias_of]
        return t.name

    def run_reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Integer reference: memory-order integer inputs -> every tensor's integers."""
        vals = dict(inputs)
        for L in self.layers:
            vals[L.output] = L.reference([vals[i] for i in L.inputs], self.tensors)
        return vals
