"""Verbs and recipes: one set of typed fields shared by the Python API, the CLI, YAML files and sweeps.

A verb is a plain function with typed keyword parameters, listed by name in `VERBS`. A YAML recipe holds
values for those parameters; `inherit:` names other recipes (relative to the file) whose values it starts
from, so shared defaults live in one place. Command-line flags override the recipe; the function's own
defaults fill the rest. `bind` checks the names and coerces the types, and `invoke` binds and calls, for
every route (CLI, `call`, sweep cells).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

import yaml

from longctx.common import LongctxError

# Every `longctx` verb: name -> "module:function" (a mapping: a verb with sub-verbs, `longctx kfp compile`).
# The CLI, the sweep's cells and kfp's steps all look verbs up here; modules are imported only when a verb
# is resolved, so `longctx --help` stays fast.
VERBS: dict[str, str | dict[str, str]] = {
    "convert": "longctx.convert:convert",
    "pretrain": "longctx.pretrain:pretrain",
    "finetune": "longctx.finetune:finetune",
    "evaluate": "longctx.finetune:evaluate",
    "score": "longctx.qa.metrics:score",
    "concat": "longctx.data.concat:concat_dataset",
    "sweep": "longctx.sweep:sweep",
    "report": "longctx.report:report",
    "kfp": {"compile": "longctx.kfp:compile_pipeline", "pytorchjob": "longctx.kfp:render_pytorchjob",
            "concat-data": "longctx.kfp:concat_data"},
    "demo": "longctx.demo:demo",
}

# Keys a recipe may carry that are about the recipe, not parameters of the verb.
RECIPE_KEYS = {"inherit", "description"}


def resolve(target: str) -> Callable:
    """The function of a verb name ("finetune", "kfp compile") or of a "module:function" target."""
    if ":" not in target:
        entry: Any = VERBS
        for word in target.split():
            entry = entry.get(word) if isinstance(entry, dict) else None
        if not isinstance(entry, str):
            raise LongctxError(f"unknown verb '{target}'")
        target = entry
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def verb_name(target: str) -> str:
    """The `longctx` words that run a "module:function" target ("longctx.finetune:evaluate" -> "evaluate")."""
    for name, entry in VERBS.items():
        subs = entry.items() if isinstance(entry, dict) else [("", entry)]
        for sub, value in subs:
            if value == target:
                return f"{name} {sub}".strip()
    raise LongctxError(f"no `longctx` verb runs {target}")


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`; nested mappings are merged key by key (the one merge rule of `inherit:`)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
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
    return inherit(data, path.parent, _seen + (path,))


def inherit(values: dict[str, Any], base: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`values` (a recipe's mapping) on top of the recipes its `inherit:` names, relative to `base`.

    The one place `inherit:` is resolved, for recipe files and for a matrix's inline recipes alike:
    parents in order, then `values`, each merged with `merge`; `description` is dropped."""
    values = dict(values)
    parents = values.pop("inherit", None) or []
    values.pop("description", None)
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = merge(merged, load_recipe(Path(base) / parent, _seen))
    return merge(merged, values)


def parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def type_hints(fn: Callable) -> dict[str, Any]:
    return typing.get_type_hints(fn)


def strip_optional(tp: Any) -> Any:
    """`X` for `X | None` (the type a field has when it is given)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise a one-line error."""
    if value is None:
        return None
    tp = strip_optional(tp)
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
            try:
                return int(value)
            except ValueError:  # int()'s own message ("invalid literal for int() with base 10") says less
                raise ValueError("must be an integer") from None
        if tp is float:
            try:
                return float(value)
            except ValueError:
                raise ValueError("must be a number") from None
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
            try:
                bound[name] = coerce(name, values[name], hints.get(name, Any))
            except LongctxError as e:  # name the recipe (or matrix entry) the value came from
                raise LongctxError(f"{source}: {e}") from None
        elif p.default is inspect.Parameter.empty:
            raise LongctxError(f"{source}: missing required field '{name}' for '{fn.__name__}'")
    return bound


def routed(fn: Callable, fields: tuple[str, ...], route: Callable[[dict[str, Any]], Callable]) -> Callable:
    """`fn` whose `fields` select the function that runs: `route(values)` returns it (or `fn`).

    Every route reaches the selected function with its own fields, checked strictly: the CLI and `call`
    pick it before binding (`select`), and a direct Python call is re-bound here. So a field the selected
    function lacks is refused with a one-line error naming it, never dropped, and a field given with the
    same value as `fn`'s default still reaches the other function (the wrapper sees what was passed)."""
    if any(p.kind is not p.KEYWORD_ONLY for p in parameters(fn).values()):
        raise TypeError(f"routed verb {fn.__name__} must take keyword-only fields")

    @functools.wraps(fn)
    def verb(**kwargs: Any) -> Any:
        target = route(kwargs)
        if target is verb or target is fn:
            return fn(**kwargs)
        chosen = ", ".join(f"{f}={kwargs[f]!r}" for f in fields if f in kwargs)
        return invoke(target, kwargs, source=f"{fn.__name__}({chosen})")

    verb.route = route  # type: ignore[attr-defined]
    verb.route_fields = fields  # type: ignore[attr-defined]
    return verb


def select(fn: Callable, values: dict[str, Any]) -> Callable:
    """The function a call of verb `fn` with `values` runs (another one for a routed verb's field)."""
    route = getattr(fn, "route", None)
    return route(values) if route else fn


def invoke(fn: Callable, values: dict[str, Any], source: str) -> Any:
    """Bind `values` to the function they select and call it: the one bind-then-call of the CLI, `call`
    and sweep cells (positional-only fields are passed by position)."""
    fn = select(fn, values)
    bound = bind(fn, values, source=source)
    positional = [bound.pop(p.name) for p in parameters(fn).values()
                  if p.kind is p.POSITIONAL_ONLY and p.name in bound]
    return fn(*positional, **bound)


def call(fn: Callable, config: str | Path | None = None, **overrides: Any) -> Any:
    """Python-API twin of the CLI: `call(finetune, "experiments/x.yaml", learning_rate=1e-4)`."""
    values = load_recipe(config) if config else {}
    values.update(overrides)
    return invoke(fn, values, source=str(config or fn.__name__))


def resolved_config(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every field of `fn` with the value it actually ran with (defaults included), JSON-ready."""
    out = {}
    for name, p in parameters(fn).items():
        value = kwargs.get(name, p.default)
        if value is inspect.Parameter.empty:
            continue
        out[name] = str(value) if isinstance(value, Path) else value
    return out
