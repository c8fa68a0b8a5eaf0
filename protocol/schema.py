"""Field constraints and the table-driven validator behind every message class.

A message class declares its fields with ordinary annotations, optionally wrapped in
``Annotated[..., constraint]``. :func:`compile_fields` turns the annotations into a tuple
of :class:`FieldSpec` once, when the class is defined: each spec holds the field's
:data:`Shape` (what the wire value must be) and a parser built from it.

The parsers here are the reference validator: they decide, and word every error a peer
sees. ``protocol.compiled`` builds faster decoders from the same shapes; those only accept
or step aside, and leave every refusal to this module.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from .errors import ErrorCode, FieldError

#: Largest integer every JSON implementation represents exactly (2**53 - 1).
MAX_SAFE_INT = 9_007_199_254_740_991


@dataclasses.dataclass(frozen=True, slots=True)
class Pattern:
    """A string field must match ``regex`` in full and be at most ``max_len`` long."""

    regex: str
    max_len: int

    def check(self, value: str) -> bool:
        return len(value) <= self.max_len and re.fullmatch(self.regex, value) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """An integer field must lie in ``[low, high]``."""

    low: int
    high: int

    def check(self, value: int) -> bool:
        return self.low <= value <= self.high


Constraint = Pattern | Range
Parser = Callable[[Any, str, "int | None"], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Scalar:
    """A str, int or bool of exactly that type, with an optional constraint."""

    kind: type
    constraint: Constraint | None


@dataclasses.dataclass(frozen=True, slots=True)
class MapOf:
    """A map whose keys and values each have a shape (read into a dict)."""

    key: Shape
    value: Shape


@dataclasses.dataclass(frozen=True, slots=True)
class ListOf:
    """An array whose items have one shape (read into a tuple)."""

    item: Shape


@dataclasses.dataclass(frozen=True, slots=True)
class Nested:
    """A map read into another wire class (a gift, a leaderboard line)."""

    cls: type


Shape = Scalar | MapOf | ListOf | Nested


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    optional: bool
    parse: Parser
    shape: Shape


def _fail(field: str, expected: str, rid: int | None) -> FieldError:
    return FieldError(ErrorCode.BAD_FIELD, f"field '{field}' must be {expected}", rid)


def _scalar_parser(kind: type, constraint: Constraint | None) -> Parser:
    # Typed over Any: after the exact-type test below mypy narrows ``value`` to ``object``,
    # while compile time guarantees a Pattern only ever guards str and a Range int.
    check: Callable[[Any], bool] | None = None if constraint is None else constraint.check
    reason = "" if constraint is None else _describe(constraint)
    # An integer past 64 bits reaches us as a float (that is how orjson reads it): "must be
    # an integer from 0 to ..." is true of it and of any other wrong value.
    wrong_type = reason if isinstance(constraint, Range) else f"of type {kind.__name__}"

    def parse(value: Any, field: str, rid: int | None) -> Any:
        # bool is a subclass of int in Python: a JSON true must not pass as 1.
        if type(value) is not kind:
            raise _fail(field, wrong_type, rid)
        if check is not None and not check(value):
            raise _fail(field, reason, rid)
        return value

    return parse


def _describe(constraint: Constraint) -> str:
    if isinstance(constraint, Range):
        return f"an integer from {constraint.low} to {constraint.high}"
    return f"a string of at most {constraint.max_len} characters matching {constraint.regex}"


def _dict_parser(key_parser: Parser, value_parser: Parser) -> Parser:
    def parse(value: Any, field: str, rid: int | None) -> Any:
        if not isinstance(value, dict):
            raise _fail(field, "a map", rid)
        return {key_parser(k, field, rid): value_parser(v, field, rid) for k, v in value.items()}

    return parse


def _tuple_parser(item_parser: Parser) -> Parser:
    def parse(value: Any, field: str, rid: int | None) -> Any:
        # Exactly list: decoders only produce lists, and msgpack's ExtType is a tuple
        # subclass that must not pass for an array.
        if type(value) is not list:
            raise _fail(field, "a list", rid)
        return tuple(item_parser(item, f"{field}[{i}]", rid) for i, item in enumerate(value))

    return parse


def _nested_parser(cls: type) -> Parser:
    specs: tuple[FieldSpec, ...] = cls.FIELDS  # type: ignore[attr-defined]

    def parse(value: Any, field: str, rid: int | None) -> Any:
        if not isinstance(value, dict):
            raise _fail(field, "a map", rid)
        return cls(**parse_fields(specs, value, rid, prefix=f"{field}."))

    return parse


def _shape_for(hint: Any) -> tuple[Shape, bool]:
    """Return the shape of a type hint and whether the field is optional."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        constraint = next((e for e in extras if isinstance(e, Pattern | Range)), None)
        expected_base = {Pattern: str, Range: int}.get(type(constraint), base)
        if base is not expected_base:
            raise TypeError(f"{type(constraint).__name__} cannot constrain {base!r}")
        return Scalar(base, constraint), False
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {hint!r}")
        shape, _ = _shape_for(args[0])
        return shape, True
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return MapOf(_shape_for(key_hint)[0], _shape_for(value_hint)[0]), False
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        return ListOf(_shape_for(item_hint)[0]), False
    if hint in (str, int, bool):
        return Scalar(hint, None), False
    if dataclasses.is_dataclass(hint) and hasattr(hint, "FIELDS"):
        return Nested(hint), False  # type: ignore[arg-type]
    raise TypeError(f"unsupported field type {hint!r}")


def parser_for(shape: Shape) -> Parser:
    """The reference parser of a shape."""
    if isinstance(shape, Scalar):
        return _scalar_parser(shape.kind, shape.constraint)
    if isinstance(shape, MapOf):
        return _dict_parser(parser_for(shape.key), parser_for(shape.value))
    if isinstance(shape, ListOf):
        return _tuple_parser(parser_for(shape.item))
    return _nested_parser(shape.cls)


def compile_fields(cls: type) -> tuple[FieldSpec, ...]:
    """Build the validation table of a dataclass from its annotations."""
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = []
    for field in dataclasses.fields(cls):
        shape, optional = _shape_for(hints[field.name])
        has_default = field.default is not dataclasses.MISSING
        specs.append(FieldSpec(field.name, optional or has_default, parser_for(shape), shape))
    return tuple(specs)


def parse_fields(
    specs: tuple[FieldSpec, ...], raw: dict[Any, Any], rid: int | None, prefix: str = ""
) -> dict[str, Any]:
    """Validate ``raw`` against ``specs``; unknown keys are ignored for forward compatibility.

    ``prefix`` is the path of a nested map ("gift.", "pending[2].") so that an error names
    the field a client developer has to look at, not just its last component.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        value = raw.get(spec.name)
        if value is None:
            if not spec.optional:
                raise FieldError(ErrorCode.BAD_FIELD, f"field '{prefix}{spec.name}' is required", rid)
            continue
        out[spec.name] = spec.parse(value, prefix + spec.name, rid)
    return out
