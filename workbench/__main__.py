"""`python -m workbench ...`: the `workbench` command (and what `torchrun -m workbench` runs)."""

import sys

from workbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
