"""`python -m pecrs.cli COMMAND ...`, as `accelerate launch -m pecrs.cli` and `torchrun -m pecrs.cli` run it."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
