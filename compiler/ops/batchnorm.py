"""BatchNormalization not folded into a convolution: a per-channel affine map on the VFU
(y = x * k + b, k = gamma / sqrt(var + eps), b = beta - mean * k)."""
import numpy as np

from ..errors import UnsupportedOpError
from ..frontend import batchnorm_factor, batchnorm_training
from .elementwise import add_affine


def lower_batchnorm(node, ctx):
    if batchnorm_training(node):
        raise UnsupportedOpError("BatchNormalization in training mode (training_mode=1 or "
                                 "running statistics outputs) is not supported")
    consts = [ctx.const(i) for i in node.input[1:5]]
    if any(c is None for c in consts):
        raise UnsupportedOpError("BatchNormalization parameters must be constants")
    gamma, beta, mean, var = (np.asarray(c, np.float64).reshape(-1) for c in consts)
    t_in = ctx.tensor(node.input[0])
    channels = t_in.shape[1] if len(t_in.shape) > 1 else 1
    if any(v.size != channels for v in (gamma, beta, mean, var)):
        # opset < 9 spatial=0: a statistic per element, not per channel
        raise UnsupportedOpError(
            f"BatchNormalization with {gamma.size} statistics for {channels} channels "
            f"(spatial=0, one per element) is not supported; allowed: one per channel")
    k = batchnorm_factor(node, gamma, var)
    b = beta - mean * k
    # One value per channel (axis 1), laid out to broadcast against the logical shape.
    shape = (k.size,) + (1,) * (len(t_in.shape) - 2)
    add_affine(node, ctx, t_in, k.reshape(shape), b.reshape(shape))
