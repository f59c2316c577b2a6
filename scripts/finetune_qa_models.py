#!/usr/bin/env python
"""finetune_qa_models.py: the thesis' name for fine-tuning extractive QA models; now `longctx finetune`.

    python scripts/finetune_qa_models.py --config experiments/finetune/base.yaml [--seed 42 ...]
    make repl run="scripts/finetune_qa_models.py --config experiments/finetune/base.yaml"

Every argument goes to `longctx finetune` unchanged (see `--help`); flags override the recipe's values.
Several GPUs: torchrun --nproc_per_node=2 -m longctx finetune --config ...
"""
import sys
from pathlib import Path

try:
    from longctx.cli import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from longctx.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
