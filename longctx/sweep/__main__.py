"""`python -m longctx.sweep CELL_FOLDER`: run one cell in a child process (how `longctx sweep` isolates cells)."""
import sys

from longctx.sweep.runner import worker

if len(sys.argv) != 2:
    sys.exit("usage: python -m longctx.sweep CELL_FOLDER (used by `longctx sweep` to run one cell)")
sys.exit(worker(sys.argv[1]))
