"""Regenerate tests/data/torch_adam.{json,npz}: a few Adam and AdamW steps computed by PyTorch.

    /work/venv/bin/python tests/make_torch_oracle.py        # needs torch; the tests do not

Each case is a small network trained for `steps` minibatches of `batch_size` rows (rows visited
in order, no shuffling) with torch.optim.Adam or torch.optim.AdamW, weight decay on the weights
only (biases in a parameter group without decay, as fastgd does). Stored per case K:
`caseK_X`, `caseK_y` (integer labels), `caseK_W{l}`/`caseK_b{l}` (start), `caseK_W{l}_after`/
`caseK_b{l}_after` (after the last step), and the optimiser's moments after the last step,
`caseK_m_W{l}`, `caseK_v_W{l}`, `caseK_m_b{l}`, `caseK_v_b{l}`. Every array has the case's dtype.

Conventions (fastgd's): mse = mean over the minibatch of ½‖a − onehot(y)‖²; cross_entropy with
softmax = −Σ onehot·log_softmax(z); with sigmoid = Σ per-unit binary cross-entropy from the
logits z; weights are (n_in, n_out) and z = x @ W + b.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "data"

HIDDEN = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh,
          "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01)}


def loss_of(z, t, output, loss):
    if loss == "cross_entropy":
        if output == "softmax":
            return -(t * torch.log_softmax(z, dim=1)).sum(dim=1).mean()
        return torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none").sum(dim=1).mean()
    a = {"sigmoid": torch.sigmoid, "softmax": lambda v: torch.softmax(v, dim=1), "linear": lambda v: v}[output](z)
    return (0.5 * ((a - t) ** 2).sum(dim=1)).mean()


def run_case(k, case, arrays):
    rng = np.random.default_rng(100 + k)
    dtype = {"float32": torch.float32, "float64": torch.float64}[case["dtype"]]
    np_dtype = np.dtype(case["dtype"])
    sizes = case["sizes"]
    n = case["steps"] * case["batch_size"] - case.get("short_last", 0)  # a smaller last minibatch if short_last
    X = rng.standard_normal((n, sizes[0])).astype(np_dtype)
    y = rng.integers(0, sizes[-1], n)
    Ws = [torch.tensor((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np_dtype), requires_grad=True)
          for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [torch.tensor((0.1 * rng.standard_normal(b)).astype(np_dtype), requires_grad=True) for b in sizes[1:]]
    arrays[f"case{k}_X"], arrays[f"case{k}_y"] = X, y
    for l, (W, b) in enumerate(zip(Ws, bs)):
        arrays[f"case{k}_W{l}"], arrays[f"case{k}_b{l}"] = W.detach().numpy().copy(), b.detach().numpy().copy()
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[case["optimizer"]]
    opt = cls([{"params": Ws, "weight_decay": case["weight_decay"]}, {"params": bs, "weight_decay": 0.0}],
              lr=case["lr"], betas=tuple(case["betas"]), eps=case["eps"])
    T = torch.tensor(np.eye(sizes[-1])[y].astype(np_dtype))
    Xt = torch.tensor(X)
    losses = []
    for step in range(case["steps"]):
        rows = slice(step * case["batch_size"], (step + 1) * case["batch_size"])
        a = Xt[rows]
        for l, (W, b) in enumerate(zip(Ws, bs)):
            z = a @ W + b
            a = HIDDEN[case["activation"]](z) if l < len(Ws) - 1 else z
        loss = loss_of(z, T[rows], case["output"], case["loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    case["losses"] = losses
    for l, (W, b) in enumerate(zip(Ws, bs)):
        arrays[f"case{k}_W{l}_after"] = W.detach().numpy().copy()
        arrays[f"case{k}_b{l}_after"] = b.detach().numpy().copy()
        for name, p in (("W", W), ("b", b)):
            st = opt.state[p]
            arrays[f"case{k}_m_{name}{l}"] = st["exp_avg"].numpy().copy()
            arrays[f"case{k}_v_{name}{l}"] = st["exp_avg_sq"].numpy().copy()


def cases():
    out = []
    nets = [  # (sizes, activation, output, loss)
        ([5, 4, 3], "sigmoid", "sigmoid", "cross_entropy"),  # sigmoid output with cross-entropy
        ([5, 6, 4, 3], "relu", "softmax", "cross_entropy"),
        ([5, 4, 3], "tanh", "sigmoid", "mse"),
        ([5, 4, 2], "leaky_relu", "linear", "mse"),
    ]
    settings = [  # (optimizer, weight_decay, betas, eps, lr)
        ("adam", 0.0, (0.9, 0.999), 1e-8, 0.01),
        ("adam", 0.05, (0.9, 0.999), 1e-8, 0.01),
        ("adamw", 0.0, (0.8, 0.99), 1e-6, 0.02),
        ("adamw", 0.1, (0.9, 0.999), 1e-8, 0.01),
    ]
    for dtype in ("float64", "float32"):
        for i, (sizes, act, output, loss) in enumerate(nets):
            for j, (opt, wd, betas, eps, lr) in enumerate(settings):
                if dtype == "float32" and (i + j) % 2:  # float32: half the grid keeps the file small
                    continue
                out.append({"sizes": sizes, "activation": act, "output": output, "loss": loss, "dtype": dtype,
                            "optimizer": opt, "weight_decay": wd, "betas": list(betas), "eps": eps, "lr": lr,
                            "batch_size": 4, "steps": 3, "short_last": 1 if (i + j) % 3 == 0 else 0})
    return out


def main():
    torch.manual_seed(0)
    arrays, all_cases = {}, cases()
    for k, case in enumerate(all_cases):
        run_case(k, case, arrays)
    (OUT / "torch_adam.json").write_text(json.dumps(
        {"generator": "tests/make_torch_oracle.py", "torch": torch.__version__, "cases": all_cases}, indent=1) + "\n")
    np.savez_compressed(OUT / "torch_adam.npz", **arrays)
    print(f"wrote {len(all_cases)} cases to {OUT / 'torch_adam.json'} and torch_adam.npz")


if __name__ == "__main__":
    main()
