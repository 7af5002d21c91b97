"""``python -m regrow`` and ``torchrun -m regrow``: the ``regrow`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
