"""Launch arguments: typed declarations, values given as `name:=value`, `$(...)` substitution.

A launch file declares its arguments (ROS 2's `DeclareLaunchArgument`) with a type, a default
and a description; `vigil launch FILE name:=value` and an `include:` give them values. Any
string in the rest of the file may then use

* `$(arg NAME)`: the argument's value. A string that is exactly one `$(arg NAME)` takes the
  argument's typed value (so `replicas: $(arg workers)` is an int); inside a longer string it
  is spelt as text;
* `$(env NAME)` or `$(env NAME DEFAULT)`: an environment variable of the launcher.

Substitution runs once, on the YAML tree, before the file is decoded into its typed model: the
types of the launch model check every substituted value like any other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

import msgspec

from vigil.errors import ConfigError
from vigil.schemas import Config

__all__ = [
    "ArgName",
    "Argument",
    "Given",
    "Scalar",
    "parse_assignments",
    "resolve_arguments",
    "substitute",
]

ArgName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Scalar = str | int | float | bool
ArgType = Literal["str", "int", "float", "bool"]

_SUBSTITUTION = re.compile(r"\$\((?P<kind>[a-z_]+)(?:\s+(?P<rest>[^()]*?))?\s*\)")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class Argument(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One declared launch argument; without a default it must be given."""

    type: ArgType = "str"
    default: Scalar | None = None
    description: Annotated[str, msgspec.Meta(max_length=512)] = ""
    choices: list[Scalar] | None = None


class Given(msgspec.Struct, frozen=True, kw_only=True):
    """Values handed to a launch file, and where they were written (for errors).

    `source` and `path` name the place that gave them: the command line (the launch file
    itself, at `$.arguments`) or an `include:` entry of another file.
    """

    values: Mapping[str, Scalar]
    source: str
    path: str
    where: str = "on the command line"


def parse_assignments(tokens: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Split command-line tokens into the other tokens and `name:=value` assignments."""
    rest: list[str] = []
    values: dict[str, str] = {}
    for token in tokens:
        name, sep, value = token.partition(":=")
        if sep and name:
            values[name] = value
        else:
            rest.append(token)
    return rest, values


def _coerce(kind: ArgType, value: Scalar) -> Scalar:
    """`value` as `kind`; text is parsed, other values must already be of the kind.

    ValueError says what was expected.
    """
    if isinstance(value, str):
        if kind == "str":
            return value
        if kind == "bool":
            word = value.strip().lower()
            if word in _TRUE | _FALSE:
                return word in _TRUE
            raise ValueError(f"expected bool (true/false), got {value!r}")
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            raise ValueError(f"expected {kind}, got {value!r}") from None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"expected {kind}, got {type(value).__name__} {value!r}")


def resolve_arguments(
    source: str, declared: Mapping[str, Argument], given: Given
) -> dict[str, Scalar]:
    """The value of every declared argument; ConfigError names an unknown, ill-typed or
    missing one at its `$.path`."""
    known = ", ".join(sorted(declared)) or "none"
    for name in given.values:
        if name not in declared:
            raise ConfigError(
                given.source,
                f"{given.path}.{name}",
                f"unknown argument {name!r} given {given.where} (declared in {source}: {known})",
            )
    values: dict[str, Scalar] = {}
    for name, argument in declared.items():
        if name in given.values:
            raw, where_source, where = given.values[name], given.source, f"{given.path}.{name}"
        elif argument.default is not None:
            raw, where_source, where = argument.default, source, f"$.arguments.{name}.default"
        else:
            raise ConfigError(
                given.source,
                f"{given.path}.{name}",
                f"argument {name!r} of {source} has no default: give {name}:=VALUE",
            )
        if isinstance(raw, str):
            raw = _substitute_text(raw, values, source, where)
        try:
            value = _coerce(argument.type, raw)
        except ValueError as exc:
            raise ConfigError(where_source, where, f"argument {name!r}: {exc}") from exc
        if argument.choices is not None and value not in argument.choices:
            options = ", ".join(str(c) for c in argument.choices)
            raise ConfigError(
                where_source, where, f"argument {name!r}: {value!r} is not one of {options}"
            )
        values[name] = value
    return values


def _one(kind: str, rest: str, values: Mapping[str, Scalar], source: str, path: str) -> Scalar:
    """The value of one `$(kind rest)`."""
    words = rest.split(maxsplit=1)
    if kind == "arg" and len(words) == 1:
        if words[0] not in values:
            known = ", ".join(sorted(values)) or "none"
            raise ConfigError(
                source, path, f"$(arg {words[0]}): no such argument (declared: {known})"
            )
        return values[words[0]]
    if kind == "env" and words:
        found = os.environ.get(words[0])
        if found is not None:
            return found
        if len(words) == 2:
            return words[1]
        raise ConfigError(
            source, path, f"$(env {words[0]}): not set (give a default: $(env {words[0]} VALUE))"
        )
    raise ConfigError(
        source,
        path,
        f"$({kind} {rest}) is not a substitution; use $(arg NAME) or $(env NAME [DEFAULT])",
    )


def _substitute_text(text: str, values: Mapping[str, Scalar], source: str, path: str) -> Scalar:
    whole = _SUBSTITUTION.fullmatch(text)
    if whole is not None:
        return _one(whole["kind"], whole["rest"] or "", values, source, path)

    def spelt(match: re.Match[str]) -> str:
        value = _one(match["kind"], match["rest"] or "", values, source, path)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return _SUBSTITUTION.sub(spelt, text)


def substitute(tree: object, values: Mapping[str, Scalar], source: str, path: str = "$") -> object:
    """A copy of the YAML `tree` with every `$(...)` in its string values replaced."""
    if isinstance(tree, str):
        return _substitute_text(tree, values, source, path) if "$(" in tree else tree
    if isinstance(tree, dict):
        return {k: substitute(v, values, source, f"{path}.{k}") for k, v in tree.items()}
    if isinstance(tree, list):
        return [substitute(v, values, source, f"{path}[{i}]") for i, v in enumerate(tree)]
    return tree
