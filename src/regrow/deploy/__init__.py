"""Deployable sparse models: ``regrow.export`` (CSR/BSR, constant fan-in, 2:4, channel
slimming), :func:`load` for the files it writes, and ``regrow bench``.

The package is called ``deploy`` so that ``regrow.export`` can be the function."""
from .api import FORMATS, Exported, export, load, read, sparse_layers  # noqa: F401
from .kernels import SparseLinear  # noqa: F401
from .select import choose, time_alternating  # noqa: F401

__all__ = ["FORMATS", "Exported", "export", "load", "read", "sparse_layers", "SparseLinear",
           "choose", "time_alternating"]
