"""Every malformed or hostile input of tests/hostile/corpus.py, through the real CLI in a subprocess.

Each case must end with exit status 2 and exactly one line on stderr that names the broken file (and the
record, when there is one), with no traceback, and must leave nothing behind: no new file or folder beside
its inputs, no output folder. Cases that fail because of code outside the data and scoring modules are strict
xfails with the reason (they turn into failures once fixed, so the marker gets removed).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostile.corpus import Case, all_cases

REPO = Path(__file__).resolve().parent.parent
CASES = all_cases()


def _param(case: Case):
    marks = list(case.marks)
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    return pytest.param(case, id=case.name, marks=marks)


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "longctx", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, errors="replace", timeout=600)


def test_corpus_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) > 150


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input_is_one_line_and_leaves_nothing(case: Case, tmp_path, request):
    folder = tmp_path / "case"
    folder.mkdir()
    if case.needs_model:  # built once per session, only when a case needs real weights to damage
        tiny = request.getfixturevalue("tiny_encoder_dir")
        run = case.build(folder, model=Path(tiny("roberta", max_positions=64)))
    else:
        run = case.build(folder)
    before = _tree(folder)
    done = _run_cli(run.argv, folder)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr
    (line,) = lines
    assert line.startswith(f"longctx {run.argv[0]}: error: "), line
    assert str(run.file) in line, f"the error does not name {run.file}: {line}"
    if run.record is not None:
        assert run.record in line, f"the error does not name the record {run.record!r}: {line}"
    assert _tree(folder) == before, f"left behind: {sorted(_tree(folder) - before)}"
    if run.out is not None:
        assert not run.out.exists()
