"""regrow: train sparse neural networks by pruning and regrowing weights and channels."""
from .methods import (  # noqa: F401  (importing registers the methods)
    GMP, METHODS, SET, SNIP, Dense, DropGrowMethod, RigL, SparseMethod, Static,
)
from .methods import DSTEE, OptG  # noqa: F401
from .methods import ASP, HALP, IEE, ChannelIEE  # noqa: F401
from .methods.base import method_class
from .state import SparseState, check_masks_synchronized, mask_checksum
from .deploy import export, load as load_export  # noqa: F401

from .version import __version__


def create(name: str, model, optimizer, **config):
    """Build the registered method ``name`` (e.g. ``"rigl"``) on ``model``/``optimizer``;
    ``structure`` picks the method's variant for it (``create("iee", ...,
    structure="channel")`` builds :class:`ChannelIEE`)."""
    return method_class(name, config.get("structure"))(model, optimizer, **config)


__all__ = [
    "create", "METHODS", "SparseMethod", "DropGrowMethod", "SparseState", "mask_checksum",
    "check_masks_synchronized",
    "Dense", "Static", "SNIP", "SET", "RigL", "GMP", "DSTEE", "OptG", "IEE", "ASP", "HALP", "ChannelIEE",
    "export", "load_export", "__version__",
]
