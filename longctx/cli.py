"""`longctx VERB ...`: each subcommand is built from a verb function's typed signature.

Flags are the function's parameters (`max_pos` -> `--max-pos`; `--max_pos` is accepted too but not shown),
booleans are `--flag/--no-flag`, positional-only parameters become positional arguments, `--config
recipe.yaml` supplies values from a recipe, and flags given on the command line override it. A verb's help
is its docstring: the summary line, the `Args:` as flag help and the `Example:` section as the epilog.
Expected mistakes (LongctxError) print one line and exit 2, no traceback.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

from longctx.common import LongctxError, setup_logging
from longctx.config import VERBS, invoke, load_recipe, parameters, resolve, select, strip_optional, type_hints

SECTION = re.compile(r"^(Args|Returns|Raises|Example|Examples):\s*$")


def doc_parts(doc: str) -> tuple[str, dict[str, str], str]:
    """Summary line, per-argument help (a Google-style `Args:` section) and the `Example:` section of a
    docstring."""
    doc = inspect.cleandoc(doc or "")
    summary = doc.split("\n\n")[0].replace("\n", " ")
    sections: dict[str, list[str]] = {}
    current = None
    for line in doc.splitlines():
        m = SECTION.match(line)
        if m:
            current = m.group(1).rstrip("s")  # Examples: as Example:
            sections[current] = []
        elif current and (line.startswith(" ") or not line.strip()):
            sections[current].append(line)
        else:
            current = None  # unindented text ends a section
    helps: dict[str, str] = {}
    name = None
    for line in sections.get("Arg", []):
        m = re.match(r"^\s{0,4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if m and not line.startswith("        "):
            name = m.group(1)
            helps[name] = m.group(2)
        elif name and line.strip():
            helps[name] += " " + line.strip()
    example = textwrap.dedent("\n".join(sections.get("Example", []))).strip()
    return summary, helps, example


def verb_summary(target: str) -> str:
    """The summary line of a verb ("module:function") or of a group's module ("module"), read from the source
    without importing it: `longctx --help` would otherwise import every verb module (numpy, datasets, ...)."""
    module, _, attr = target.partition(":")
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8")) if spec and spec.origin else None
    node = next((n for n in getattr(tree, "body", []) if getattr(n, "name", None) == attr), None) if attr else tree
    summary = doc_parts(ast.get_docstring(node) or "")[0] if node else ""
    summary = re.sub(r"^`[^`]*`:\s*", "", summary)  # a module's "`longctx kfp`: ..." prefix
    return summary[:1].upper() + summary[1:]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written (the description is wrapped by `command_parser`) and shows
    a boolean once, as `--flag/--no-flag`."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, FlagAction):
            return action.format_usage()
        return super()._format_action_invocation(action)


class FlagAction(argparse.BooleanOptionalAction):
    def format_usage(self) -> str:
        return "/".join(self.option_strings)


def dashed(argv: list[str]) -> list[str]:
    """`--max_pos=1` as `--max-pos=1`: flags are shown with dashes only, underscores are still accepted.

    Only option words change (argparse reads any word starting with `--` as an option, never as a value),
    and nothing after a bare `--`."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        if word.startswith("--"):
            flag, eq, value = word.partition("=")
            word = flag.replace("_", "-") + eq + value
        out.append(word)
    return out


def _add_argument(parser: argparse.ArgumentParser, name: str, param: inspect.Parameter, tp: Any, help_: str) -> None:
    tp = strip_optional(tp)
    origin = get_origin(tp)
    help_ = help_.replace("%", "%%")  # argparse formats help strings with %
    kwargs: dict[str, Any] = {"help": help_, "default": argparse.SUPPRESS}
    if param.default is not inspect.Parameter.empty and param.default is not None:
        shown = param.default
        if isinstance(shown, str) and shown != shown.strip() or shown == "":  # "\n\n" would print as nothing
            shown = repr(shown)
        kwargs["help"] = f"{help_} (default: {shown})".strip()
    if param.kind is param.POSITIONAL_ONLY:
        if param.default is not inspect.Parameter.empty:
            kwargs["nargs"] = "?"
        parser.add_argument(name, metavar=name.upper(), **kwargs)
        return
    flags = [f"--{name.replace('_', '-')}"]
    if name == "out":  # every verb's output: `-o` as in most tools
        flags.append("-o")
    if tp is bool:
        kwargs["action"] = FlagAction
    elif origin in (list, tuple):
        kwargs["nargs"] = "+"
    elif origin is Literal:
        kwargs["choices"] = [str(c) for c in get_args(tp)]
    parser.add_argument(*flags, **kwargs)


def build_parser(name: str | None = None) -> argparse.ArgumentParser:
    """`longctx --help`, or for a verb with sub-verbs `name` (kfp) its own list of them: one line per verb."""
    verbs = VERBS if name is None else VERBS[name]
    if name is None:
        parser = argparse.ArgumentParser(prog="longctx", description="Long-context question answering toolkit.",
                                         epilog="Run `longctx VERB --help` for a verb's flags and an example.",
                                         formatter_class=HelpFormatter)
        parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        parser.add_argument("--version", action="store_true", help="print the version and exit")
    else:
        module = next(iter(verbs.values())).partition(":")[0]
        parser = argparse.ArgumentParser(prog=f"longctx {name}", description=verb_summary(module),
                                         formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, target in verbs.items():
        if isinstance(target, dict):  # a group: its module's summary
            target = next(iter(target.values())).partition(":")[0]
        sub.add_parser(verb, help=verb_summary(target).replace("%", "%%"), add_help=False)
    return parser


def command_parser(name: str, fn: Callable) -> argparse.ArgumentParser:
    summary, helps, example = doc_parts(inspect.getdoc(fn) or "")
    parser = argparse.ArgumentParser(prog=f"longctx {name}", description=textwrap.fill(summary.replace("%", "%%")),
                                     epilog="Example:\n" + textwrap.indent(example, "  ") if example else None,
                                     formatter_class=HelpFormatter)
    if "config" not in parameters(fn):
        parser.add_argument("--config", help="YAML recipe with values for these fields", default=None)
    hints = type_hints(fn)
    for pname, param in parameters(fn).items():
        _add_argument(parser, pname, param, hints.get(pname, Any), helps.get(pname, ""))
    return parser


def parse_command(name: str, argv: list[str]) -> tuple[Callable, dict[str, Any], str]:
    """The function `longctx NAME ARGV` runs, the values it gets (recipe, then flags) and their source.

    A routed verb (finetune's `task` and `pipeline`) is resolved first from those fields alone, so the flags
    are the selected function's own (`--task seq2seq --max-source-length 512`)."""
    argv = dashed(argv)
    fn = resolve(name)
    fields = getattr(fn, "route_fields", ())
    if fields:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        for field in fields:
            pre.add_argument(f"--{field.replace('_', '-')}", dest=field)
        known, _ = pre.parse_known_args(argv)
        peek = load_recipe(known.config) if known.config else {}
        peek.update({f: getattr(known, f) for f in fields if getattr(known, f) is not None})
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
        if group is None and word == "--version":
            from longctx import __version__

            print(f"longctx {__version__}")
            return 0
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
