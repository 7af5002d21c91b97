"""regrow: train sparse neural networks by pruning and regrowing weights and channels."""
from .methods import (  # noqa: F401  (importing registers the methods)
    GMP, METHODS, SET, SNIP, Dense, DropGrowMethod, RigL, SparseMethod, Static,
)
from .state import SparseState, mask_checksum

__version__ = "0.1.0"


def create(name: str, model, optimizer, **config):
    """Build the registered method ``name`` (e.g. ``"rigl"``) on ``model``/``optimizer``."""
    return METHODS.get(name)(model, optimizer, **config)


__all__ = [
    "create", "METHODS", "SparseMethod", "DropGrowMethod", "SparseState", "mask_checksum",
    "Dense", "Static", "SNIP", "SET", "RigL", "GMP", "__version__",
]
