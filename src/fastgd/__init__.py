"""fastgd: dense neural networks trained by minibatch SGD, Adam or AdamW on the CPU, in compiled epoch loops.

    import fastgd
    X_train, y_train, X_test, y_test = fastgd.datasets.load_mnist()
    net = fastgd.Network([784, 16, 16, 10], activation="sigmoid", output="sigmoid", seed=0)
    fastgd.Trainer(net, loss="mse", lr=3.0, batch_size=10, epochs=30).fit(X_train, y_train)
    print((net.predict(X_test) == y_test).mean())
"""
from . import datasets, ops, optim, schedules
from .backends import BackendUnavailable, available_backends, get_backend
from .network import Network
from .trainer import History, Trainer

__version__ = "0.1.0"
__all__ = ["Network", "Trainer", "History", "datasets", "ops", "optim", "schedules", "BackendUnavailable",
           "available_backends", "get_backend", "__version__"]
