"""`fastgd export MODEL.npz --onnx model.onnx`: a saved network as an ONNX model."""
from __future__ import annotations

import sys

EPILOG = """examples:
  fastgd export lesson.npz --onnx lesson.onnx
  python -c "import onnxruntime as ort, numpy as np; s = ort.InferenceSession('lesson.onnx'); \\
             print(s.run(None, {'input': np.zeros((1, 784), np.float32)})[0])"

The ONNX model has one input "input" (n, features; float32, or float64 for a float64 network) and
one output "output" (n, outputs) equal to Network.predict_proba, scalers included. Feed images as
float pixel / 255. Class names and feature names are in the model's metadata.
"""


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.npz", help="a network saved by `fastgd train --save` or Network.save")
    p.add_argument("--onnx", required=True, metavar="PATH", help="write the ONNX model here (required)")
    p.add_argument("--check", action="store_true",
                   help="run the exported model in onnxruntime on random inputs and report the largest "
                        "difference from fastgd (default: off)")


def run(args):
    import numpy as np

    from .export import to_onnx
    from .network import Network

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
        X = np.random.default_rng(0).standard_normal((256, net.sizes[0])).astype(net.dtype)
        if net.x_std is not None:
            X = X * net.x_std + (0 if net.x_mean is None else net.x_mean)
        X = X.astype(net.dtype)
        got = session.run(None, {"input": X})[0]
        want = net.predict_proba(X, backend="numpy")
        print(f"onnxruntime vs fastgd on 256 random inputs: largest difference "
              f"{float(np.max(np.abs(got.astype(np.float64) - want))):.3g}", file=sys.stdout)
    return 0
