"""A trained network in other frameworks: ONNX (`to_onnx`, fastgd[onnx]) and PyTorch (`to_torch`).

Both compute `net.predict_proba` on float inputs: the input scaler and, for regression, the
target scaler are part of the exported model. fastgd's uint8 shortcut (pixel / 255) is not: feed
uint8 images to them as float pixel / 255, or, when the network has an input scaler (fitted on
the raw values), as the raw values in float.
"""
from __future__ import annotations

import json

import numpy as np

#: ONNX opset and IR version written: old enough for onnxruntime releases of the last years.
ONNX_OPSET = 17
ONNX_IR_VERSION = 9


def _leaky_slope():
    try:
        from .ops import LEAKY_SLOPE
    except ImportError:  # before the ops table existed there was no leaky_relu
        return 0.01
    return LEAKY_SLOPE


def _layers(net):
    """(W (n_in, n_out), b (n_out), activation name) per layer, as float64 copies."""
    out = []
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        act = net.activation if l < net.n_layers - 1 else net.output
        out.append((W.astype(np.float64), b.astype(np.float64), act))
    return out


# ---- PyTorch ------------------------------------------------------------------------------------
def to_torch(net):
    """A `torch.nn.Sequential` of Linear layers and activations that computes `net.predict_proba`.

    The input scaler is folded into the first Linear layer and the target scaler into the last
    (W' = W / x_std, b' = b - (x_mean / x_std) W; W'' = W * y_std, b'' = b * y_std + y_mean).
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError('Network.to_torch needs PyTorch: pip install torch') from exc
    dtype = torch.float64 if net.dtype == np.float64 else torch.float32
    layers = _layers(net)
    if net.x_mean is not None or net.x_std is not None:
        W, b, act = layers[0]
        mean = np.zeros(W.shape[0]) if net.x_mean is None else net.x_mean
        std = np.ones(W.shape[0]) if net.x_std is None else net.x_std
        layers[0] = (W / std[:, None], b - (mean / std) @ W, act)
    if net.y_mean is not None or net.y_std is not None:
        W, b, act = layers[-1]
        mean = np.zeros(W.shape[1]) if net.y_mean is None else net.y_mean
        std = np.ones(W.shape[1]) if net.y_std is None else net.y_std
        layers[-1] = (W * std[None, :], b * std + mean, act)
    modules = []
    for W, b, act in layers:
        linear = torch.nn.Linear(W.shape[0], W.shape[1], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        if act != "linear":
            modules.append(_torch_activation(torch, act))
    return torch.nn.Sequential(*modules)


def _torch_activation(torch, name):
    table = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh,
             "leaky_relu": lambda: torch.nn.LeakyReLU(_leaky_slope()), "softmax": lambda: torch.nn.Softmax(dim=1)}
    if name not in table:
        raise ValueError(f"activation {name!r} has no PyTorch equivalent in fastgd.export")
    return table[name]()


# ---- ONNX ---------------------------------------------------------------------------------------
def to_onnx(net, path=None):
    """An `onnx.ModelProto` with input "input" (n, sizes[0]) and output "output" (n, sizes[-1]) equal to
    `net.predict_proba`, in the network's dtype. Written to `path` when given. Needs fastgd[onnx]."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise ImportError('ONNX export needs the onnx package: pip install "fastgd[onnx]"') from exc
    elem = TensorProto.DOUBLE if net.dtype == np.float64 else TensorProto.FLOAT
    dt = net.dtype
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dt), name))
        return name

    x = "input"
    if net.x_mean is not None:
        nodes.append(helper.make_node("Sub", [x, const("x_mean", net.x_mean)], ["x_centred"]))
        x = "x_centred"
    if net.x_std is not None:
        nodes.append(helper.make_node("Div", [x, const("x_std", net.x_std)], ["x_scaled"]))
        x = "x_scaled"
    for l, (W, b, act) in enumerate(_layers(net)):
        z = f"z{l}"
        nodes.append(helper.make_node("Gemm", [x, const(f"W{l}", W), const(f"b{l}", b)], [z]))
        x = f"a{l}"
        if act == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [z], [x]))
        elif act == "relu":
            nodes.append(helper.make_node("Relu", [z], [x]))
        elif act == "tanh":
            nodes.append(helper.make_node("Tanh", [z], [x]))
        elif act == "softmax":
            nodes.append(helper.make_node("Softmax", [z], [x], axis=1))
        elif act == "leaky_relu":  # max(z, slope*z): Mul and Max run in float and double alike
            nodes.append(helper.make_node("Mul", [z, const(f"slope{l}", _leaky_slope())], [f"{z}_slope"]))
            nodes.append(helper.make_node("Max", [z, f"{z}_slope"], [x]))
        elif act == "linear":
            x = z
        else:
            raise ValueError(f"activation {act!r} has no ONNX equivalent in fastgd.export")
    if net.y_std is not None:
        nodes.append(helper.make_node("Mul", [x, const("y_std", net.y_std)], ["y_scaled"]))
        x = "y_scaled"
    if net.y_mean is not None:
        nodes.append(helper.make_node("Add", [x, const("y_mean", net.y_mean)], ["y_shifted"]))
        x = "y_shifted"
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    graph = helper.make_graph(
        nodes, "fastgd_network",
        [helper.make_tensor_value_info("input", elem, ["n", net.sizes[0]])],
        [helper.make_tensor_value_info("output", elem, ["n", net.sizes[-1]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="fastgd", ir_version=ONNX_IR_VERSION)
    from . import __version__

    meta = {"fastgd_version": __version__, "sizes": json.dumps(net.sizes), "activation": net.activation,
            "output": net.output, "task": net.task}
    if net.classes is not None:
        meta["classes"] = json.dumps([c.item() if isinstance(c, np.generic) else c for c in net.classes])
    if net.feature_names is not None:
        meta["feature_names"] = json.dumps(list(net.feature_names))
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    if path is not None:
        from .network import atomic_write

        atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return model
