"""Typed configuration: a dataclass filled from defaults, then a YAML file, then command-line flags.

Every field is declared once, with `option(default, help, checks...)`; the same declaration gives
the YAML key, the `--flag` (underscores become dashes) or positional argument, the `--help` text
and the validation, so no list of options is kept in two places. Validation names the bad field:

    >>> TrainConfig.from_dict({"lr": -1})
    ConfigError: lr must be > 0, got -1

Unknown keys are rejected (a typo in a YAML file must not silently fall back to a default), and
so are non-finite numbers (nan, inf) wherever a number is expected.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from spikingmamba.configs import config_path
from spikingmamba.errors import ConfigError
from spikingmamba.utils.io import read_yaml

C = typing.TypeVar("C", bound="Config")


def option(default: Any, help: str, *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None, choices: tuple | None = None,
           positional: bool = False, group: str | None = None, metavar: str | None = None,
           aliases: tuple[str, ...] = ()) -> Any:
    """A config field with its help text and range checks (applied by `validate`).

    positional: a command-line argument without a flag (optional there; `check` may require it);
        a tuple field takes any number of them.
    group: the `--help` section the flag is listed under (e.g. "machine").
    aliases: further flags for the same option (e.g. "--threads" for --num-threads).
    """
    checks = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le, choices=choices).items() if v is not None}
    cli = {k: v for k, v in dict(positional=positional, group=group, metavar=metavar, aliases=aliases).items() if v}
    return field(default=default, metadata={"help": help, **checks, **cli})


@dataclass
class Config:
    """Base of every configuration dataclass: construction, YAML, validation."""

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
        """Build and validate from a mapping; unknown keys and ill-typed values are `ConfigError`s."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of option names to values, got "
                              f"{type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        kwargs = {name: _coerce(name, value, hints[name], source) for name, value in values.items()}
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def load(cls: type[C], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
             base: dict[str, Any] | None = None) -> C:
        """Defaults < `base` < the YAML file < `overrides` (e.g. CLI flags)."""
        values: dict[str, Any] = dict(base or {})
        if yaml_path is not None:
            yaml_path = config_path(yaml_path)
            values.update(read_yaml(yaml_path))
        values.update(overrides or {})
        return cls.from_dict(values, source=f"config ({yaml_path})" if yaml_path else "config")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_plain(self) -> dict[str, Any]:
        """The fields as plain YAML / JSON values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_dict().items()}

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_plain(), sort_keys=False), encoding="utf-8")

    def replace(self: C, **changes) -> C:
        return type(self).from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Range checks declared with `option`, then the cross-field rules of `check`."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            _coerce(f.name, value, hints[f.name], "config")  # also catches wrong types set in Python
            if value is None:
                continue
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
            for key, ok, word in (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
                                  ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")):
                values = value if isinstance(value, tuple) else (value,)
                if key in meta and not all(ok(v, meta[key]) for v in values):
                    raise ConfigError(f"{f.name} must be {word} {meta[key]}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Cross-field rules; subclasses extend."""


# --- types ------------------------------------------------------------------------------------
def _strip_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _coerce(name: str, value: Any, tp, source: str) -> Any:
    """Check `value` against the annotation `tp`; accept the lossless conversions YAML and the
    command line need (an int for a float, "1e-3" for a float, "1,8" or a list for a tuple)."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {name} may not be empty (null)")
    if typing.get_origin(inner) is tuple:
        item_tp = typing.get_args(inner)[0]
        if isinstance(value, str):
            value = [_parse_text(name, v.strip(), item_tp, source) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {name} must be a list, got {value!r}")
        return tuple(_coerce(name, v, item_tp, source) for v in value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
    if inner is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
        return number
    if inner is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {name}")  # a programming error, not a user one


def _parse_text(name: str, text: str, tp, source: str) -> Any:
    """One item of a comma-separated command-line list, as `tp`."""
    if tp not in (int, float):
        return text
    try:
        return tp(text)
    except ValueError:
        kind = "integers" if tp is int else "numbers"
        raise ConfigError(f"{source}: {name} must be comma-separated {kind}, got {text!r}") from None


# --- command line -----------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, cls: type[Config], yaml_file: bool = True) -> None:
    """One `--flag` (or positional argument) per field. Arguments default to "not given", so YAML
    values are only overridden by what is actually passed. Booleans get `--x / --no-x`."""
    if yaml_file:
        parser.add_argument("--config", metavar="YAML",
                            help="YAML file of options, or the name of a shipped recipe (`spikingmamba configs` "
                            "lists them); arguments given on the command line win")
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in fields(cls):
        meta = f.metadata
        target = parser
        if meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        inner, optional = _strip_optional(hints[f.name])
        default = f.default if f.default is not MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = meta.get("help", "")
        if not meta.get("positional") and shown not in (None, ""):
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if meta.get("positional"):  # a tuple takes any number of arguments
            nargs = "*" if typing.get_origin(inner) is tuple else "?"
            target.add_argument(f.name, nargs=nargs, metavar=meta.get("metavar", f.name.upper()), **kwargs)
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs["dest"] = f.name
        if inner is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if typing.get_origin(inner) is tuple:
            kwargs["metavar"] = meta.get("metavar", "A,B,...")
        elif inner in (int, float):
            kwargs["type"] = _cli_number(inner, f.name)
            kwargs["metavar"] = meta.get("metavar", "N" if inner is int else "X")
        elif "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        target.add_argument(flag, *meta.get("aliases", ()), **kwargs)


def _cli_number(tp, name):
    def parse(text: str):
        try:
            return tp(text)
        except ValueError:
            kind = "an integer" if tp is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
    parse.__name__ = tp.__name__
    return parse


def given_values(cls: type[Config], args: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` that the command line set (flags default to "not given")."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The config of a CLI call: defaults < --config YAML < arguments given."""
    return cls.load(getattr(args, "config", None), given_values(cls, args))


def add_config_parser(subparsers, name: str, cls: type[Config], func, help: str,
                      yaml_file: bool = True) -> argparse.ArgumentParser:
    """A verb whose options are the fields of `cls`; its description is `func`'s docstring."""
    p = subparsers.add_parser(name, help=help, description=func.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, cls, yaml_file=yaml_file)
    p.set_defaults(func=func)
    return p


__all__ = ["Config", "option", "add_config_arguments", "add_config_parser", "config_from_args",
           "given_values", "read_yaml"]
