"""Sparsity methods. Importing this package registers every built-in method."""
from ..modules import sparse_parameters
from .base import METHODS, DropGrowMethod, DynamicConfig, SparseMethod, SparsityConfig
from .asp import ASP
from .dense import Dense
from .dst_ee import DSTEE
from .gmp import GMP
from .iee import IEE
from .halp import HALP
from .iee_channel import ChannelIEE
from .optg import OptG
from .rigl import RigL
from .set import SET
from .snip import SNIP
from .static import Static

__all__ = [
    "METHODS", "SparseMethod", "DropGrowMethod", "SparsityConfig", "DynamicConfig",
    "sparse_parameters", "Dense", "Static", "SNIP", "SET", "RigL", "GMP",
    "DSTEE", "OptG", "IEE", "ASP", "HALP", "ChannelIEE",
]
