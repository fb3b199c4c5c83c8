"""`fastgd export MODEL.npz --onnx model.onnx`: a saved network as an ONNX model."""
from __future__ import annotations

import sys

EPILOG = """examples:
  fastgd export lesson.npz --onnx lesson.onnx
  python -c "import onnxruntime as ort, numpy as np; s = ort.InferenceSession('lesson.onnx'); \\
             print(s.run(None, {'input': np.zeros((1, 784), np.float32)})[0])"

The ONNX model has one input "input" (n, features; float32, or float64 for a float64 network) and
one output "output" (n, outputs) equal to Network.predict_proba, scalers included. Feed images as
float pixel / 255, unless the model has an input scaler (--standardize): then the raw values.
Class names and feature names are in the model's metadata.
"""


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.npz", help="a network saved by `fastgd train --save` or Network.save")
    p.add_argument("--onnx", required=True, metavar="PATH", help="write the ONNX model here (required)")
    p.add_argument("--check", nargs="?", const=True, default=None, metavar="DATA",
                   help="run the exported model in onnxruntime on DATA (any `fastgd predict` data; uint8 images "
                        "as pixel / 255 unless the model has an input scaler) or, without DATA, on 256 random inputs, and report the largest "
                        "difference from Network.predict_proba (default: off)")


def run(args):
    import numpy as np

    from .export import to_onnx
    from .network import Network

    from pathlib import Path

    if not Path(args.onnx).parent.is_dir():
        raise ValueError(f"--onnx {args.onnx}: the folder {str(Path(args.onnx).parent)!r} does not exist")
    net = Network.load(args.model)
    model = to_onnx(net, args.onnx)
    print(f"fastgd export: wrote {args.onnx} ({len(model.graph.node)} nodes, opset "
          f"{model.opset_import[0].version}) from {args.model}: {net}")
    if args.check:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError('--check needs onnxruntime: pip install onnxruntime') from exc
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        if args.check is True:
            X = np.random.default_rng(0).standard_normal((256, net.sizes[0]))
            if net.x_std is not None:
                X = X * net.x_std + (0 if net.x_mean is None else net.x_mean)
            what = "256 random inputs"
        else:
            from .data_files import load_inputs

            X, _, what = load_inputs(args.check, None, net.feature_names)
            if X.dtype == np.uint8 and net.x_mean is None and net.x_std is None:
                X = X / 255.0  # what fastgd feeds the network for uint8 pixels (a scaler takes raw values)
            what = f"{len(X)} samples of {what}"
        X = np.ascontiguousarray(X, dtype=net.dtype)
        got = session.run(None, {"input": X})[0].astype(np.float64)
        want = net.predict_proba(X, backend="numpy").astype(np.float64)
        diff = np.abs(got - want)
        rel = float(np.max(diff / np.maximum(np.abs(want), 1.0)))
        print(f"onnxruntime vs fastgd on {what}: largest difference {float(diff.max()):.3g} "
              f"(relative to max(|value|, 1): {rel:.3g})", file=sys.stdout)
    return 0
