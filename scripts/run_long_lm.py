#!/usr/bin/env python
"""run_long_lm.py: the thesis' name for masked-LM pretraining of a long model; now `longctx pretrain`.

    python scripts/run_long_lm.py --config experiments/pretrain/roberta-long.yaml [--flag value ...]
    make repl run="scripts/run_long_lm.py --config experiments/pretrain/roberta-long.yaml"

Every argument goes to `longctx pretrain` unchanged (see `--help`). The conversion step of the old script
is its own verb: `longctx convert --model roberta-base --out models/roberta-long --max-pos 4096`.
"""
import sys
from pathlib import Path

try:
    from longctx.cli import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from longctx.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
