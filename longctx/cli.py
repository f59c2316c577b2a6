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
from longctx.config import _strip_optional, bind, load_recipe, parameters, type_hints

# name -> "module:function". Imported lazily so `longctx --help` stays fast.
COMMANDS: dict[str, str] = {
    "convert": "longctx.convert:convert",
    "pretrain": "longctx.pretrain:pretrain",
    "finetune": "longctx.finetune:finetune",
    "evaluate": "longctx.finetune:evaluate",
    "score": "longctx.qa.metrics:score",
    "sweep": "longctx.sweep:sweep",
    "report": "longctx.report:report",
    "kfp": "longctx.kfp:kfp",
    "demo": "longctx.demo:demo",
}


def resolve(target: str) -> Callable:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


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
    tp = _strip_optional(tp)
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
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin in (list, tuple):
        kwargs["nargs"] = "+"
    elif origin is Literal:
        kwargs["choices"] = [str(c) for c in get_args(tp)]
    parser.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longctx", description="Long-context question answering toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        sub.add_parser(name, help=f"see `longctx {name} --help`", add_help=False)
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


def run_command(name: str, argv: list[str]) -> Any:
    fn = resolve(COMMANDS[name])
    if hasattr(fn, "cli"):  # a verb with sub-verbs of its own (e.g. `longctx kfp compile`)
        return fn.cli(argv)
    if hasattr(fn, "route"):  # a field (e.g. finetune's `task`) selects which function's fields apply
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        pre.add_argument("--task")
        known, _ = pre.parse_known_args(argv)
        peek = load_recipe(known.config) if known.config else {}
        if known.task:
            peek["task"] = known.task
        fn = fn.route(peek)
    args = vars(command_parser(name, fn).parse_args(argv))
    recipe = args.pop("config", None)
    values = load_recipe(recipe) if recipe else {}
    values.update(args)
    bound = bind(fn, values, source=str(recipe or f"longctx {name}"))
    positional = [bound.pop(p.name) for p in parameters(fn).values()
                  if p.kind is p.POSITIONAL_ONLY and p.name in bound]
    return fn(*positional, **bound)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv[:1] or "--verbose" in argv[:1]
    if verbose:
        argv = argv[1:]
    import logging

    setup_logging(logging.DEBUG if verbose else logging.INFO)
    try:
        from dotenv import load_dotenv

        load_dotenv(Path.cwd() / ".env", override=False)  # flags and the real environment win
    except ImportError:
        pass
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"longctx: error: unknown command '{argv[0]}' (choose from {', '.join(COMMANDS)})", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    try:
        run_command(argv[0], argv[1:])
    except LongctxError as e:
        print(f"longctx {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"longctx {argv[0]}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
