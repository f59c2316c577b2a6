"""The job part of docker/container-check.sh, run inside the container (make repl run="docker/container_check.py"):
a tiny encoder (longctx.testing, no download) converted and fine-tuned through the CLI on a few generated
questions, reading and writing the mounted folders (/models, /data, /logs). Prints one JSON line for the check.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from longctx.cli import main
from longctx.data.squad import write_squad
from longctx.testing import synthetic_qa, tiny_encoder

models, data, logs = (Path(os.environ[name]) for name in ("MODEL_DIR", "DATA_DIR", "LOG_DIR"))
source = tiny_encoder("roberta", models / "check-tiny", max_positions=64)
assert main(["convert", "--model", str(source), "--out", str(models / "check-tiny-long"),
             "--max-pos", "256", "--attention-window", "32"]) == 0
write_squad(synthetic_qa(16, seed=0), data / "check-train.json", "1.1")
write_squad(synthetic_qa(8, seed=1), data / "check-eval.json", "1.1")
run = logs / "check-finetune"
assert main(["finetune", "--model", str(models / "check-tiny-long"), "--out", str(run),
             "--train-file", str(data / "check-train.json"), "--eval-file", str(data / "check-eval.json"),
             "--max-length", "128", "--doc-stride", "32", "--num-train-epochs", "1",
             "--per-device-train-batch-size", "4", "--logging-steps", "1", "--seed", "0"]) == 0
metrics = json.loads((run / "metrics.json").read_text())
print("CHECK", json.dumps({"uid": os.getuid(), "gid": os.getgid(), "eval": metrics["eval"],
                           "files": sorted(str(p.relative_to(run)) for p in run.iterdir())}))
