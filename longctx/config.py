"""Recipes: one set of typed fields shared by the Python API, the CLI and YAML files.

A verb is a plain function with typed keyword parameters. A YAML recipe holds values for those
parameters; `inherit:` names other recipes (relative to the file) whose values it starts from, so
shared defaults live in one place. Command-line flags override the recipe; the function's own
defaults fill the rest. `bind` checks the names and coerces the types for all three routes.
"""
from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

import yaml

from longctx.common import LongctxError

# Keys a recipe may carry that are about the recipe, not parameters of the verb.
RECIPE_KEYS = {"inherit", "description"}


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content ({} when empty); a missing file or bad YAML is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise LongctxError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LongctxError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML recipe, resolving `inherit:` (a path or a list of paths, earlier ones first)."""
    path = Path(path).resolve()
    if path in _seen:
        raise LongctxError(f"{path}: inherit cycle ({' -> '.join(p.name for p in _seen + (path,))})")
    data = read_yaml(path, "recipe")
    if not isinstance(data, dict):
        raise LongctxError(f"{path}: a recipe must be a mapping of field: value")
    parents = data.pop("inherit", None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = _merge(merged, load_recipe(path.parent / parent, _seen + (path,)))
    data.pop("description", None)
    return _merge(merged, data)


def parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def type_hints(fn: Callable) -> dict[str, Any]:
    return typing.get_type_hints(fn)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise a one-line error."""
    if value is None:
        return None
    tp = _strip_optional(tp)
    origin = get_origin(tp)
    try:
        if tp is Any or tp is inspect.Parameter.empty:
            return value
        if origin is Literal:
            choices = get_args(tp)
            if value not in choices:
                # Command-line values arrive as strings; match them against non-string choices too.
                matches = [c for c in choices if str(c) == str(value)]
                if not matches:
                    raise ValueError(f"must be one of {', '.join(map(str, choices))}")
                value = matches[0]
            return value
        if origin in (list, tuple):
            (item,) = get_args(tp)[:1] or (Any,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            if not isinstance(value, (list, tuple)):
                value = [value]
            return [coerce(name, v, item) for v in value]
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                raise ValueError("must be a mapping")
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("must be an integer")
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        if tp is Path:
            return Path(value)
        return tp(value)
    except (TypeError, ValueError) as e:
        raise LongctxError(f"field '{name}': {value!r} {e if str(e) else 'has the wrong type'}") from None


def bind(fn: Callable, values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check `values` against `fn`'s parameters and coerce them; missing required fields are an error."""
    params = parameters(fn)
    hints = type_hints(fn)
    unknown = sorted(set(values) - set(params) - RECIPE_KEYS)
    if unknown:
        raise LongctxError(f"{source}: unknown field(s) {', '.join(unknown)} for '{fn.__name__}' "
                           f"(known: {', '.join(params)})")
    bound = {}
    for name, p in params.items():
        if name in values:
            bound[name] = coerce(name, values[name], hints.get(name, Any))
        elif p.default is inspect.Parameter.empty:
            raise LongctxError(f"{source}: missing required field '{name}' for '{fn.__name__}'")
    return bound


def call(fn: Callable, config: str | Path | None = None, **overrides: Any) -> Any:
    """Python-API twin of the CLI: `call(finetune, "experiments/x.yaml", learning_rate=1e-4)`."""
    values = load_recipe(config) if config else {}
    values.update(overrides)
    if hasattr(fn, "route"):  # e.g. finetune with `task: seq2seq` binds to the T5 verb's fields
        fn = fn.route(values)
    bound = bind(fn, values, source=str(config or fn.__name__))
    positional = [bound.pop(p.name) for p in parameters(fn).values()
                  if p.kind is p.POSITIONAL_ONLY and p.name in bound]
    return fn(*positional, **bound)


def resolved_config(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every field of `fn` with the value it actually ran with (defaults included), JSON-ready."""
    out = {}
    for name, p in parameters(fn).items():
        value = kwargs.get(name, p.default)
        if value is inspect.Parameter.empty:
            continue
        out[name] = str(value) if isinstance(value, Path) else value
    return out
