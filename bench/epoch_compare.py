"""Full-epoch timing of two fastgd source trees through the public API, alternating them in
subprocesses (ratios within one run): e.g. before/after a change to the kernels.

    python bench/epoch_compare.py OLD/src NEW/src [rounds]   # median epoch ms, epochs after the first
"""
import json, subprocess, sys, statistics, os

CASES = [  # (sizes, act, out, loss, lr, batch, threads, dtype, backend)
    ("784,16,16,10", "sigmoid", "sigmoid", "mse", 3.0, 10, 1, "float32", "cython"),
    ("784,16,16,10", "sigmoid", "sigmoid", "mse", 3.0, 10, 2, "float32", "cython"),
    ("784,16,16,10", "sigmoid", "sigmoid", "mse", 3.0, 128, 2, "float32", "cython"),
    ("784,16,16,10", "sigmoid", "sigmoid", "mse", 3.0, 10, 1, "float64", "cython"),
    ("784,128,10", "relu", "softmax", "cross_entropy", 0.05, 32, 2, "float32", "cython"),
    ("784,512,512,10", "relu", "softmax", "cross_entropy", 0.05, 128, 2, "float32", "cython"),
    ("784,16,16,10", "sigmoid", "sigmoid", "mse", 3.0, 10, 1, "float32", "numba"),
    ("784,16,16,10", "sigmoid", "sigmoid", "mse", 3.0, 10, 2, "float32", "numba"),
    ("784,128,10", "relu", "softmax", "cross_entropy", 0.05, 32, 2, "float32", "numba"),
    ("784,512,512,10", "relu", "softmax", "cross_entropy", 0.05, 128, 2, "float32", "numba"),
]
CHILD = r'''
import json, sys, numpy as np, fastgd
sizes, act, out, loss, lr, bs, th, dt, be, epochs = json.loads(sys.argv[1])
X, y, _, _ = fastgd.datasets.load_mnist()
net = fastgd.Network([int(s) for s in sizes.split(",")], activation=act, output=out, dtype=dt, seed=0)
h = fastgd.Trainer(net, loss=loss, lr=lr, batch_size=bs, epochs=epochs, backend=be, threads=th, seed=0).fit(X, y)
print(json.dumps([r["seconds"] for r in h.records]))
'''

def run(src, case, epochs):
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(case) + [epochs])], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])[1:]  # drop the first epoch

if __name__ == "__main__":
    a, b = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    print(f"| case | before ms | after ms | after/before |\n|---|---:|---:|---:|")
    for case in CASES:
        epochs = 3 if "512" in case[0] else 5
        ta, tb = [], []
        for _ in range(rounds):
            ta += run(a, case, epochs); tb += run(b, case, epochs)
        ma, mb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
        sizes, act, out, loss, lr, bs, th, dt, be = case
        print(f"| {be} {sizes} {act}/{loss} {dt} batch {bs}, {th} thr | {ma:.1f} | {mb:.1f} | {mb/ma:.2f} |", flush=True)
