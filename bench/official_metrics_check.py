"""Check longctx.qa.metrics against the official SQuAD (and optionally MLQA) evaluation scripts.

The official scripts are not part of longctx; download them and pass their paths:
  evaluate-v1.1.py, evaluate-v2.0.py  (github.com/rajpurkar/SQuAD-explorer)
  mlqa_evaluation_v1.py               (github.com/facebookresearch/MLQA, optional)

    python bench/official_metrics_check.py --official-v1 evaluate-v1.1.py --official-v2 evaluate-v2.0.py \
        [--official-mlqa mlqa_evaluation_v1.py] [--data-dir ../shared/data]

Each gold file is scored with several generated prediction sets (gold answers, perturbed and truncated
answers, random context spans, empty strings, another question's answer, some ids missing) by the
official script in a subprocess and by longctx; it prints max |diff| per file and set and exits 1 if any
exceeds --tol. evaluate-v2.0.py crashes on missing predictions, so for that set it scores only the
answered questions and longctx's percentages are rescaled by the ratio of the totals.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from longctx.common import SHARED_DATA
from longctx.data.squad import load_squad, write_squad
from longctx.qa.metrics import squad_v1, squad_v2

MLQA_LANGS = ("ar", "de", "en", "es", "hi", "vi", "zh")


def prediction_sets(examples: list[dict], seed: int) -> dict[str, dict[str, str]]:
    rng = random.Random(seed)
    first = [ex["answers"]["text"][0] if ex["answers"]["text"] else "" for ex in examples]

    def perturb(ex: dict, gold: str) -> str:
        words = gold.split()
        choice = rng.randrange(7)
        if choice == 0 and len(words) > 1:
            return " ".join(words[1:])
        if choice == 1 and len(words) > 1:
            return " ".join(words[:-1])
        if choice == 2 and gold:
            start = ex["answers"]["answer_start"][0]
            return ex["context"][start:start + len(gold) + 15]
        if choice == 3:
            return gold.upper()
        if choice == 4:
            return f"The {gold}."
        if choice == 5:
            return ex["answers"]["text"][-1] if ex["answers"]["text"] else "none"
        return f"({gold}) — “{gold}”"

    def random_span(ex: dict) -> str:
        words = ex["context"].split()
        i = rng.randrange(len(words))
        return " ".join(words[i:i + rng.randint(1, 6)])

    sets = {
        "gold": {ex["id"]: g for ex, g in zip(examples, first)},
        "perturbed": {ex["id"]: perturb(ex, g) for ex, g in zip(examples, first)},
        "truncated": {ex["id"]: g[:max(1, len(g) // 2)] for ex, g in zip(examples, first)},
        "random_span": {ex["id"]: random_span(ex) for ex in examples},
        "empty": {ex["id"]: "" for ex in examples},
        "other_question": {ex["id"]: first[(i + 1) % len(first)] for i, ex in enumerate(examples)},
    }
    missing = {qid: ("" if rng.random() < 0.05 else p) for qid, p in sets["perturbed"].items()
               if rng.random() >= 0.1}
    sets["missing"] = missing
    return sets


def run_official(script: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed: {out.stderr.strip().splitlines()[-1]}")
    text = out.stdout[out.stdout.index("{"):]  # v2 prints 'Missing prediction' lines first
    return json.loads(text), text.strip()


def max_diff(ours: dict, official: dict) -> float:
    if set(ours) != set(official):
        raise RuntimeError(f"keys differ: ours {list(ours)} official {list(official)}")
    return max(abs(float(ours[k]) - float(official[k])) for k in official)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-v1", type=Path, required=True)
    parser.add_argument("--official-v2", type=Path, required=True)
    parser.add_argument("--official-mlqa", type=Path)
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-9)
    args = parser.parse_args()

    v1_files = [args.data_dir / "squad-v1.1/dev-v1.1.json", *sorted((args.data_dir / "xquad").glob("xquad.*.json"))]
    v2_file = args.data_dir / "squad-v2.0-explorer-derived/dev-v2.0.explorer-derived.json"
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def report(name: str, set_name: str, diff: float, same_text: bool | None) -> None:
            nonlocal worst
            worst = max(worst, diff)
            text = "" if same_text is None else ("identical output" if same_text else "OUTPUT TEXT DIFFERS")
            print(f"{name:<34} {set_name:<15} max|diff| = {diff:.3g}  {text}", flush=True)

        for path in v1_files:
            examples = load_squad(str(path)).examples
            lang = path.name.split(".")[1] if path.parent.name == "xquad" else None
            for set_name, preds in prediction_sets(examples, args.seed).items():
                pred_file = tmp / "pred.json"
                pred_file.write_text(json.dumps(preds))
                official, text = run_official(args.official_v1, str(path), str(pred_file))
                ours = squad_v1(examples, preds)
                report(path.name, set_name, max_diff(ours, official), json.dumps(ours) == text)
                if args.official_mlqa and lang in MLQA_LANGS:
                    official, text = run_official(args.official_mlqa, str(path), str(pred_file), lang)
                    ours = squad_v1(examples, preds, lang=lang)
                    report(f"{path.name} (MLQA lang={lang})", set_name, max_diff(ours, official),
                           json.dumps(ours) == text)

        examples = load_squad(str(v2_file)).examples
        rng = random.Random(args.seed)
        na_probs = {ex["id"]: round(rng.random(), 2) for ex in examples}  # rounded: ties exercise the sort
        (tmp / "na.json").write_text(json.dumps(na_probs))
        for set_name, preds in prediction_sets(examples, args.seed).items():
            subset = [ex for ex in examples if ex["id"] in preds]
            gold_file = v2_file
            if len(subset) < len(examples):
                gold_file = write_squad(subset, tmp / "subset.json", "2.0")
            (tmp / "pred.json").write_text(json.dumps(preds))
            for label, extra, probs, thresh in (("", [], None, 1.0),
                                                (" +na_probs", ["-n", str(tmp / "na.json")], na_probs, 1.0),
                                                (" +na t=0.5", ["-n", str(tmp / "na.json"), "-t", "0.5"],
                                                 na_probs, 0.5)):
                official, text = run_official(args.official_v2, str(gold_file), str(tmp / "pred.json"), *extra)
                ours = squad_v2(examples, preds, probs, thresh)
                same_text = json.dumps(ours, indent=2) == text
                if len(subset) < len(examples):  # rescale our percentages to the answered questions
                    same_text = None
                    ours = {k: (v * ours[k.replace("exact", "total").replace("f1", "total")]
                                / official[k.replace("exact", "total").replace("f1", "total")]
                                if k.endswith(("exact", "f1")) and not k.startswith("best_") else v)
                            for k, v in ours.items()}
                    for k in ("best_exact", "best_f1"):
                        if k in ours:
                            ours[k] = ours[k] * len(examples) / len(subset)
                    ours["total"] = len(subset)
                    ours["HasAns_total"] = sum(1 for ex in subset if ex["answers"]["text"])
                    ours["NoAns_total"] = len(subset) - ours["HasAns_total"]
                report(v2_file.name + label, set_name, max_diff(ours, official), same_text)
    print(f"max |diff| overall: {worst:.3g} (tolerance {args.tol:g})")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
