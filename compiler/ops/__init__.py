"""One lowering per ONNX op, each in its own module, listed in an explicit registry.

A lowering is ``fn(node, ctx)``: it reads the node's inputs through the
:class:`~compiler.lower.LowerContext`, creates output tensors and appends layers. Adding an
op is adding a module and a line here.
"""
from . import conv, elementwise, gemm, pool, relu, shape
from . import avgpool, concat, lrn, pad, transpose
from . import activation, arith, batchnorm, clip, qdq, softmax
from . import gather, gru, lstm, rnn

REGISTRY = {
    "Conv": conv.lower_conv,
    "Gemm": gemm.lower_gemm,
    "MatMul": gemm.lower_matmul,
    "Relu": relu.lower_relu,
    "MaxPool": pool.lower_maxpool,
    "GlobalAveragePool": pool.lower_global_average_pool,
    "AveragePool": avgpool.lower_average_pool,
    "Concat": concat.lower_concat,
    "Pad": pad.lower_pad,
    "Transpose": transpose.lower_transpose,
    "Gather": gather.lower_gather,
    "LSTM": lstm.lower_lstm,
    "GRU": gru.lower_gru,
    "RNN": rnn.lower_rnn,
    "LRN": lrn.lower_lrn,
    "Add": elementwise.lower_add,
    "Sum": elementwise.lower_add,
    "Sub": elementwise.lower_add,
    "Flatten": shape.lower_flatten,
    "Reshape": shape.lower_reshape,
    "Squeeze": shape.lower_reshape,
    "Unsqueeze": shape.lower_reshape,
    "Dropout": shape.lower_identity,
    "Identity": shape.lower_identity,
    "Sigmoid": activation.lower_transcendental,
    "Tanh": activation.lower_transcendental,
    "LeakyRelu": activation.lower_leaky_relu,
    "PRelu": activation.lower_leaky_relu,
    "Elu": activation.lower_exp_branch,
    "Selu": activation.lower_exp_branch,
    "Softplus": activation.lower_exp_branch,
    "Clip": clip.lower_clip,
    "Mul": arith.lower_mul,
    "Div": arith.lower_mul,
    "Neg": arith.lower_neg,
    "BatchNormalization": batchnorm.lower_batchnorm,
    "Softmax": softmax.lower_softmax,
    "LogSoftmax": softmax.lower_softmax,
    "QuantizeLinear": qdq.lower_quantize,
    "DequantizeLinear": qdq.lower_dequantize,
}


def supported_ops() -> list[str]:
    return sorted(REGISTRY)
