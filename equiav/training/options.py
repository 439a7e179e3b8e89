"""Dataclass configs from JSON files and command-line options, shared by the training entry points.

Every field of a (nested) dataclass becomes an option: ``optim.warmup_steps`` is ``--optim.warmup-steps``, booleans
take ``--flag`` / ``--no-flag``, and a field's help is the ``* ``name``: text`` bullet of its class docstring. Values
from a JSON file and from the command line go through the same checks against the field types, so a wrong value
fails with a ``ConfigError`` naming the option and the type it expected.
"""

from __future__ import annotations

import argparse
import json
import re
import types
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..dataclass_io import from_dict
from ..errors import ConfigError


def option_name(dotted: str) -> str:
    """Command-line spelling of a (nested) field: ``optim.warmup_steps`` -> ``optim.warmup-steps``."""
    return dotted.replace("_", "-")


def check_minimums(config: Any, minimums: dict[str, int]) -> None:
    """Raise ``ConfigError`` naming the first (dotted) field of ``config`` below its minimum; None is not checked."""
    for dotted, low in minimums.items():
        value = config
        for part in dotted.split("."):
            value = getattr(value, part)
        if value is not None and value < low:
            raise ConfigError(f"option --{option_name(dotted)} must be at least {low}, got {value}")


def check_run_length(max_steps: int | None, epochs: float) -> None:
    """A run is as long as ``max_steps`` when given, else ``epochs`` (which must then be positive)."""
    if max_steps is None and not epochs > 0:
        raise ConfigError(f"option --epochs must be positive (or set --max-steps), got {epochs}")


_BULLET = re.compile(r"^\s*\*\s+``(\w+)``:\s*(.*?)(?=^\s*\*\s+``|^\s*$|\Z)", re.S | re.M)


def _field_help(cls: type) -> dict[str, str]:
    """Per-field help from the ``* ``name``: text`` bullets of the class docstring and of its base classes' (a
    subclass's bullet replaces its base's)."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__dict__.get("__doc__") or ""
        helps.update(
            {m.group(1): " ".join(m.group(2).replace("``", "").split()) for m in _BULLET.finditer(text)}
        )
    return helps


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _convert(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` (from JSON, or text from the command line) against the field type ``hint`` and convert it."""
    origin, args = get_origin(hint), get_args(hint)
    wrong = ConfigError(f"option --{option_name(name)}: expected {_describe(hint)}, got {value!r}")
    if hint is Any:
        return value
    if _is_union(hint):
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        ):
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, name)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"option --{option_name(name)}: expected one of {list(args)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise wrong
    if hint in (int, float):
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, str):
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                raise wrong from None
        if hint is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
            raise wrong
        return hint(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise wrong
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise wrong
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            if len(value) != len(args):
                raise wrong
            return tuple(_convert(v, a, name) for v, a in zip(value, args))
        converted = [_convert(v, args[0], name) for v in value]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or hint is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise wrong from None
        if not isinstance(value, dict):
            raise wrong
        return value
    raise ConfigError(f"option --{option_name(name)}: unsupported field type {hint!r}")


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if _is_union(hint):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"{len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_describe(args[0])}"
    if origin is dict or hint is dict:
        return "a JSON object"
    if hint is type(None):
        return "none"
    return getattr(hint, "__name__", str(hint))


def build_config(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from nested ``values``, checking names and types; raises ``ConfigError``.

    Values are converted to their field types here; the strict construction (unknown and missing fields, the
    config's own checks) is :func:`equiav.dataclass_io.from_dict`'s, as for every config of the library.
    """
    where = prefix.rstrip(".") or "config"
    if not isinstance(values, dict):
        raise ConfigError(f"option group '{where}': expected a JSON object, got {values!r}")
    hints = get_type_hints(cls)
    converted = dict(values)
    for f in fields(cls):
        name, hint = prefix + f.name, hints[f.name]
        if is_dataclass(hint):
            converted[f.name] = build_config(hint, values.get(f.name, {}), name + ".")
        elif f.name in values:
            converted[f.name] = _convert(values[f.name], hint, name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(
                f"option --{option_name(name)} is required (in the config file or on the command line)"
            )
    return from_dict(cls, converted, where)


def _default_text(f) -> str:
    if f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:
        default = f.default_factory()
    else:
        return "required"
    if isinstance(default, (dict, list, tuple)):
        return "default: " + json.dumps(default)
    return f"default: {default}"


def add_options(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One command-line option per (nested) field of dataclass ``cls``; given options land in the namespace under
    their dotted field names, options not given are absent (so a config file's value stands)."""
    hints, helps = get_type_hints(cls), _field_help(cls)
    group = parser.add_argument_group(f"{prefix.rstrip('.')} options") if prefix else parser
    for f in fields(cls):
        name, hint = prefix + f.name, hints[f.name]
        if is_dataclass(hint):
            add_options(parser, hint, name + ".")
            continue
        text = f"{helps.get(f.name, f.name.replace('_', ' '))} ({_default_text(f)})".replace("%", "%%")
        flag = f"--{option_name(name)}"
        origin, args = get_origin(hint), get_args(hint)
        if hint is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)  # fmt: skip
            continue
        inner = next((a for a in args if a is not type(None)), hint) if _is_union(hint) else hint
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text}
        if get_origin(inner) in (tuple, list):
            inner_args = get_args(inner)
            fixed = get_origin(inner) is tuple and not (len(inner_args) == 2 and inner_args[1] is Ellipsis)
            kwargs["nargs"] = len(inner_args) if fixed else "*"
            kwargs["metavar"] = "VALUE"
        elif origin is Literal:
            kwargs["choices"] = list(args)
        else:
            kwargs["metavar"] = {int: "INT", float: "FLOAT", str: "TEXT"}.get(inner, "JSON")
        group.add_argument(flag, **kwargs)


def set_nested(values: dict[str, Any], dotted: str, value: Any) -> None:
    """``values["a"]["b"] = value`` for ``dotted = "a.b"``, creating the inner objects as needed."""
    *parents, last = dotted.split(".")
    for parent in parents:
        node = values.setdefault(parent, {})
        if not isinstance(node, dict):
            raise ConfigError(
                f"option --{option_name(dotted)}: '{parent}' in the config file is not an object"
            )
        values = node
    values[last] = value


# The configs shipped with the package (``--config avdigits-tiny``); ``configs/`` of a checkout links to them.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Fields of a config file that name files or folders; relative values are taken from the file's own folder.
FILE_FIELDS = ("data.path", "data.val_path", "data.label_csv", "mae_init")

CONFIG_HELP = (
    "a JSON file of config fields, or the name of a config shipped with equiav ({names}). Relative data paths "
    "in the file (data.path, data.val_path, data.label_csv, mae_init) are taken from the file's own folder (after "
    "following links), so a run finds its data from any working directory; paths given on the command line are "
    "taken from the working directory"
)


def list_configs() -> list[str]:
    """Names of the configs shipped with the package (``avdigits-tiny``, ...)."""
    return sorted(path.stem.replace("_", "-") for path in CONFIG_DIR.glob("*.json"))


def config_help() -> str:
    """The ``--config`` help text, with the shipped config names."""
    return CONFIG_HELP.format(names=", ".join(list_configs()))


def find_config_file(name_or_path: str | Path) -> Path:
    """The file of ``--config``: an existing path, else a shipped config by name; ``ConfigError`` otherwise."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = CONFIG_DIR / f"{str(name_or_path).replace('-', '_')}.json"
    if path.suffix != ".json" and path.name == str(name_or_path) and shipped.is_file():
        return shipped
    raise ConfigError(
        f"--config {name_or_path}: no such file, and not a shipped config (shipped: {', '.join(list_configs())})"
    )


def resolve_file_fields(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``values`` with the relative paths of ``FILE_FIELDS`` joined to ``folder``."""
    for dotted in FILE_FIELDS:
        *parents, last = dotted.split(".")
        node: Any = values
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str) and node[last]:
            if not Path(node[last]).expanduser().is_absolute():
                node[last] = str(folder / node[last])
    return values


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a ``--config`` file or shipped config name, with relative data paths taken from the
    file's folder; raises ``ConfigError`` naming the file when it is not one."""
    path = find_config_file(path)
    try:
        values = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields")
    return resolve_file_fields(values, path.resolve().parent)


def config_from_layers(
    cls: type, values: dict[str, Any], args: argparse.Namespace, skip: tuple[str, ...]
) -> Any:
    """``cls`` built from ``values`` (defaults, recipes, a config file: already merged) overridden by the options
    given on the command line (``args``, leaving out the entry-point arguments named in ``skip``)."""
    for dotted, value in vars(args).items():
        if dotted not in skip:
            set_nested(values, dotted, value)
    return build_config(cls, values)
