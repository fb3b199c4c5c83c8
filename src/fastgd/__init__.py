"""fastgd: dense neural networks trained by minibatch SGD on the CPU, in compiled epoch loops."""
from .backends import BackendUnavailable, available_backends, get_backend
from .network import Network

__version__ = "0.1.0"
__all__ = ["Network", "BackendUnavailable", "available_backends", "get_backend", "__version__"]
