"""`longctx --help` and every verb's help: one spelling per flag, booleans once, summaries, examples, --version."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

import longctx
from longctx.cli import command_parser, dashed, doc_parts, main, parse_command, verb_summary
from longctx.config import VERBS, parameters, resolve, type_hints


def _verbs() -> list[str]:
    """Every runnable verb: "convert", ..., "kfp compile", ...; plus finetune's seq2seq route."""
    names = []
    for verb, entry in VERBS.items():
        names += [f"{verb} {sub}" for sub in entry] if isinstance(entry, dict) else [verb]
    return names


def _help(words: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*words, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_has_a_summary_line_per_verb(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "see `longctx" not in text and "SUPPRESS" not in text
    for verb, entry in VERBS.items():
        target = next(iter(entry.values())).partition(":")[0] if isinstance(entry, dict) else entry
        summary = verb_summary(target)
        assert len(summary.split()) >= 4, (verb, summary)
        assert f"{verb} {summary}" in text, (verb, text)
    # the summary is the function's own docstring line, read without importing its module
    assert verb_summary(VERBS["finetune"]) == doc_parts(resolve("finetune").__doc__)[0]
    assert "--version" in text


def test_help_does_not_import_the_verb_modules():
    code = ("import sys; from longctx.cli import main; main(['--help']); "
            "print([m for m in ('longctx.finetune', 'longctx.report', 'longctx.sweep', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"longctx {longctx.__version__}"


@pytest.mark.parametrize("name", _verbs() + ["finetune --task seq2seq"])
def test_verb_help_one_spelling_per_flag_and_an_example(name, capsys):
    words = name.split()
    text = _help(words, capsys)
    assert "SUPPRESS" not in text
    verb = " ".join(w for w in words if not w.startswith("--") and w != "seq2seq")
    fn = _selected(verb, words[len(verb.split()):])
    hints = type_hints(fn)
    for pname, param in parameters(fn).items():
        if param.kind is param.POSITIONAL_ONLY:
            continue
        assert f"--{pname}" not in text or "_" not in pname, (name, pname)  # no underscore spelling
        flag = f"--{pname.replace('_', '-')}"
        if hints.get(pname) in (bool, bool | None):
            assert text.count(f"{flag}/--no-{pname.replace('_', '-')}") == 2, (name, pname)  # usage + options
            assert text.count(f"--no-{pname.replace('_', '-')}") == 2
        else:
            assert flag in text, (name, pname)
    # the docstring's Example: section is the epilog, and each example is a command this parser accepts
    assert "\nExample:\n" in text, name
    examples = [line.strip() for line in text.split("\nExample:\n", 1)[1].splitlines() if line.strip()]
    assert examples and all(e.startswith(f"longctx {verb}") for e in examples), (name, examples)
    for example in examples:
        argv = shlex.split(example)[1 + len(verb.split()):]
        example_fn = _selected(verb, argv)
        command_parser(verb, example_fn).parse_args(dashed(argv))  # SystemExit (usage error) fails the test


def _selected(verb: str, argv: list[str]):
    """The function `longctx VERB ARGV` runs (finetune --task seq2seq: the T5 verb), without running it."""
    from longctx.config import select

    fn = resolve(verb)
    if "--task" in argv:
        fn = select(fn, {"task": argv[argv.index("--task") + 1]})
    return fn


def test_underscore_spellings_still_work():
    _, values, _ = parse_command("finetune", ["--model", "m", "--out", "o", "--max_length", "128",
                                               "--no-save_model", "--learning_rate=1e-4", "--eval-before"])
    assert values["max_length"] == "128" and values["save_model"] is False and values["eval_before"] is True
    assert values["learning_rate"] == "1e-4"
    # values are never rewritten, and nothing after `--`
    assert dashed(["--out", "my_run", "--lang=de_x", "--", "--a_b"]) == ["--out", "my_run", "--lang=de_x", "--", "--a_b"]


def test_doc_parts_reads_sections():
    doc = """Do a thing.

    More text.

    Args:
        alpha: first
            continued.
        beta (int): second.

    Returns:
        gamma: not an argument.

    Example:
        longctx thing --alpha 1
        longctx thing --beta 2
    """
    summary, helps, example = doc_parts(doc)
    assert summary == "Do a thing."
    assert helps == {"alpha": "first continued.", "beta": "second."}
    assert example.splitlines() == ["longctx thing --alpha 1", "longctx thing --beta 2"]


def test_string_defaults_made_of_whitespace_are_shown_quoted(capsys):
    text = _help(["concat"], capsys)
    assert re.search(r"\(default: '\\n\\n'\)", text), text
