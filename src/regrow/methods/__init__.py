"""Sparsity methods. Importing this package registers every built-in method."""
from .base import METHODS, DropGrowMethod, DynamicConfig, SparseMethod, SparsityConfig, sparse_parameters
from .dense import Dense
from .gmp import GMP
from .rigl import RigL
from .set import SET
from .snip import SNIP
from .static import Static

__all__ = [
    "METHODS", "SparseMethod", "DropGrowMethod", "SparsityConfig", "DynamicConfig",
    "sparse_parameters", "Dense", "Static", "SNIP", "SET", "RigL", "GMP",
]
