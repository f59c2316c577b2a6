"""`longctx VERB ...`: each subcommand is built from a verb function's typed signature.

Flags are the function's parameters (`max_pos` -> `--max-pos`), positional-only parameters become
positional arguments, `--config recipe.yaml` supplies values from a recipe, and flags given on the
command line override it. Expected mistakes (LongctxError) print one line and exit 2, no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

from longctx.common import LongctxError, setup_logging
from longctx.config import VERBS, invoke, load_recipe, parameters, resolve, select, strip_optional, type_hints


def _doc_parts(fn: Callable) -> tuple[str, dict[str, str]]:
    """Summary line and per-argument help from a Google-style 'Args:' docstring section."""
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    helps: dict[str, str] = {}
    if "Args:" in doc:
        current = None
        for line in doc.split("Args:", 1)[1].splitlines():
            m = re.match(r"^\s{0,4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
            if m and not line.startswith("        "):
                current = m.group(1)
                helps[current] = m.group(2)
            elif current and line.strip():
                helps[current] += " " + line.strip()
            elif not line.strip() and current:
                current = None
    return summary, helps


def _add_argument(parser: argparse.ArgumentParser, name: str, param: inspect.Parameter, tp: Any, help_: str) -> None:
    tp = strip_optional(tp)
    origin = get_origin(tp)
    help_ = help_.replace("%", "%%")  # argparse formats help strings with %
    kwargs: dict[str, Any] = {"help": help_, "default": argparse.SUPPRESS}
    if param.default is not inspect.Parameter.empty and param.default is not None:
        kwargs["help"] = f"{help_} (default: {param.default})".strip()
    if param.kind is param.POSITIONAL_ONLY:
        if param.default is not inspect.Parameter.empty:
            kwargs["nargs"] = "?"
        parser.add_argument(name, metavar=name.upper(), **kwargs)
        return
    flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
    if name == "out":  # every verb's output: `-o` as in most tools
        flags.append("-o")
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin in (list, tuple):
        kwargs["nargs"] = "+"
    elif origin is Literal:
        kwargs["choices"] = [str(c) for c in get_args(tp)]
    parser.add_argument(*flags, **kwargs)


def build_parser(name: str | None = None) -> argparse.ArgumentParser:
    """`longctx --help`, or for a verb with sub-verbs `name` (kfp) its own list of them."""
    verbs = VERBS if name is None else VERBS[name]
    if name is None:
        parser = argparse.ArgumentParser(prog="longctx", description="Long-context question answering toolkit.")
        parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    else:
        module = importlib.import_module(next(iter(verbs.values())).partition(":")[0])
        parser = argparse.ArgumentParser(prog=f"longctx {name}",
                                         description=(inspect.getdoc(module) or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, target in verbs.items():
        # A group's sub-verbs live in its module, imported above: their summaries cost nothing.
        help_ = _doc_parts(resolve(target))[0].replace("%", "%%") if name else f"see `longctx {verb} --help`"
        sub.add_parser(verb, help=help_, add_help=False)
    return parser


def command_parser(name: str, fn: Callable) -> argparse.ArgumentParser:
    summary, helps = _doc_parts(fn)
    parser = argparse.ArgumentParser(prog=f"longctx {name}", description=summary.replace("%", "%%"))
    if "config" not in parameters(fn):
        parser.add_argument("--config", help="YAML recipe with values for these fields", default=None)
    hints = type_hints(fn)
    for pname, param in parameters(fn).items():
        _add_argument(parser, pname, param, hints.get(pname, Any), helps.get(pname, ""))
    return parser


def parse_command(name: str, argv: list[str]) -> tuple[Callable, dict[str, Any], str]:
    """The function `longctx NAME ARGV` runs, the values it gets (recipe, then flags) and their source.

    A routed verb (finetune's `task`) is resolved first from its field alone, so the flags are the selected
    function's own (`--task seq2seq --max-source-length 512`)."""
    fn = resolve(name)
    field = getattr(fn, "route_field", None)
    if field:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        pre.add_argument(f"--{field.replace('_', '-')}", dest=field)
        known, _ = pre.parse_known_args(argv)
        peek = load_recipe(known.config) if known.config else {}
        if getattr(known, field) is not None:
            peek[field] = getattr(known, field)
        fn = select(fn, peek)
    args = vars(command_parser(name, fn).parse_args(argv))
    recipe = args.pop("config", None)
    values = load_recipe(recipe) if recipe else {}
    values.update(args)
    return fn, values, str(recipe or f"longctx {name}")


def run_command(name: str, argv: list[str]) -> Any:
    fn, values, source = parse_command(name, argv)
    return invoke(fn, values, source)


def _verb_words(argv: list[str]) -> tuple[str, list[str]] | int:
    """("kfp compile", the rest) for `kfp compile ...`; else the exit status after printing the help (0) or
    a usage error (2) of `longctx` or of a verb with sub-verbs."""
    group, words = None, VERBS
    for depth in range(2):
        word = argv[depth] if len(argv) > depth else None
        if word in words:
            if isinstance(words[word], str):
                return " ".join(argv[:depth + 1]), argv[depth + 1:]
            group, words = word, words[word]
            continue
        parser = build_parser(group)
        if word is None or word in ("-h", "--help"):
            parser.print_help()
            return 0
        parser.print_usage(sys.stderr)
        print(f"longctx{' ' + group if group else ''}: error: unknown command '{word}' "
              f"(choose from {', '.join(words)})", file=sys.stderr)
        return 2
    raise AssertionError("the verb table nests one level at most")


def load_env() -> None:
    """./.env into the environment (DATA_DIR, LONGCTX_IMAGE, ...); the real environment and flags win."""
    try:
        from dotenv import load_dotenv
    except ImportError:
        return
    load_dotenv(Path.cwd() / ".env", override=False)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv[:1] or "--verbose" in argv[:1]
    if verbose:
        argv = argv[1:]
    import logging

    setup_logging(logging.DEBUG if verbose else logging.INFO)
    load_env()
    words = _verb_words(argv)
    if isinstance(words, int):
        return words
    name, argv = words
    try:
        run_command(name, argv)
    except LongctxError as e:
        print(f"longctx {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"longctx {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
