"""Decoders and encoders specialised per wire class, generated once from the field tables.

Every frame a client or the server receives is validated field by field. Walking the
generic table of ``protocol.schema`` costs a closure call per field, a regex cache lookup
per string and keyword-argument plumbing per object: about 7 µs for a ``gift_sent``. The
functions here do the same checks as straight-line code, generated once per class (as
``dataclasses`` generates ``__init__``): a precompiled ``fullmatch`` per pattern, inline
type and range tests, the object built without a keyword dict.

They only decide: a decoder returns the object or raises :class:`Invalid`, and then the
caller runs the reference validator of ``protocol.schema`` on the same map. So every
refusal (code, message, rid) comes from one place and cannot drift; the fast path only
has to accept exactly what the reference accepts, which ``tests/test_protocol_compiled.py``
checks against the reference on generated inputs.

Encoders build the wire map of an object in field order, as :func:`reference_fields`
does, and fall back to it for anything unusual (a required field left ``None``, a nested
value of another type), so the bytes stay the same.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from .messages import WireObject
from .schema import FieldSpec, ListOf, Nested, Pattern, Range, Scalar, Shape

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], dict[str, Any]]


class Invalid(Exception):
    """The fast path does not accept this value; the reference validator decides."""


#: Literal alternatives ("offer|outcome") are tested by set membership, not a regex.
_WORDS = re.compile(r"[A-Za-z0-9_]+(?:\|[A-Za-z0-9_]+)*")


def _string_test(pattern: Pattern) -> Callable[[str], object]:
    """A predicate true exactly when ``re.fullmatch(pattern.regex, value)`` matches."""
    if _WORDS.fullmatch(pattern.regex):
        return frozenset(pattern.regex.split("|")).__contains__
    return re.compile(pattern.regex).fullmatch


def _scalar_condition(shape: Scalar, var: str, names: dict[str, Any], tag: str) -> str:
    """A Python expression that is true when ``var`` is NOT acceptable for ``shape``.

    An exact type test first: it also rejects ``None`` (a missing required field) and
    ``bool`` where an ``int`` is expected, as the reference does.
    """
    kind = f"_kind_{tag}"
    names[kind] = shape.kind
    bad = f"type({var}) is not {kind}"
    constraint = shape.constraint
    if isinstance(constraint, Range):
        bad += f" or not {constraint.low} <= {var} <= {constraint.high}"
    elif isinstance(constraint, Pattern):
        test = f"_test_{tag}"
        names[test] = _string_test(constraint)
        # Length first, as Pattern.check does: a huge string never reaches the regex.
        bad += f" or len({var}) > {constraint.max_len} or not {test}({var})"
    return bad


def _scalar_converter(shape: Scalar) -> Decoder:
    names: dict[str, Any] = {"Invalid": Invalid}
    condition = _scalar_condition(shape, "value", names, "0")
    source = f"def check(value):\n    if {condition}:\n        raise Invalid\n    return value\n"
    check: Decoder = _define(source, names, "check", f"scalar {shape}")
    return check


def _converter(shape: Shape) -> Decoder:
    """A function checking (and for containers, converting) one value of ``shape``."""
    if isinstance(shape, Scalar):
        return _scalar_converter(shape)
    if isinstance(shape, Nested):
        return compile_decoder(shape.cls, nested=True)
    if isinstance(shape, ListOf):
        item = _converter(shape.item)

        def read_list(value: Any) -> tuple[Any, ...]:
            # Exactly list, as the reference: msgpack's ExtType is a tuple subclass.
            if type(value) is not list:
                raise Invalid
            return tuple([item(v) for v in value])

        return read_list
    key, val = _converter(shape.key), _converter(shape.value)

    def read_map(value: Any) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise Invalid
        return {key(k): val(v) for k, v in value.items()}

    return read_map


_decoders: dict[tuple[type, bool], Decoder] = {}


def compile_decoder(cls: type, *, nested: bool = False) -> Decoder:
    """The fast decoder of ``cls`` from a wire map: the object, or :class:`Invalid`.

    ``nested`` decoders (a gift inside a message) first check that they got a map; the
    top-level caller has checked that already.
    """
    cached = _decoders.get((cls, nested))
    if cached is not None:
        return cached
    specs: tuple[FieldSpec, ...] = cls.FIELDS  # type: ignore[attr-defined]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names: dict[str, Any] = {"Invalid": Invalid, "new": object.__new__, "cls": cls, "builder": _builder(cls)}
    lines = ["def decode(raw):"]
    if nested:
        lines += ["    if not isinstance(raw, dict):", "        raise Invalid"]
    lines.append("    get = raw.get")
    for i, spec in enumerate(specs):
        var = f"v{i}"
        lines.append(f"    {var} = get({spec.name!r})")
        if isinstance(spec.shape, Scalar):
            check = [f"if {_scalar_condition(spec.shape, var, names, str(i))}:", "    raise Invalid"]
        else:
            names[f"read{i}"] = _converter(spec.shape)
            check = [f"{var} = read{i}({var})"]  # also refuses None: no container is None
        if not spec.optional:
            lines += [f"    {line}" for line in check]
            continue
        default = fields[spec.name].default
        if default is dataclasses.MISSING:
            # Optional type without a default: absent, the reference either refuses it (the
            # constructor misses an argument) or fills it from a default_factory; either
            # way it decides, so the fast path steps aside.
            lines += [f"    if {var} is None:", "        raise Invalid"]
            lines += [f"    {line}" for line in check]
            continue
        lines += [f"    if {var} is not None:"] + [f"        {line}" for line in check]
        if default is not None:
            names[f"default{i}"] = default
            lines += ["    else:", f"        {var} = default{i}"]
    lines.append("    obj = new(builder)")
    lines += [f"    obj.{spec.name} = v{i}" for i, spec in enumerate(specs)]
    lines += ["    obj.__class__ = cls", "    return obj"]
    decoder: Decoder = _define("\n".join(lines) + "\n", names, "decode", f"decoder of {cls.__name__}")
    _decoders[(cls, nested)] = decoder
    return decoder


def _builder(cls: type) -> type:
    """A mutable twin of the frozen slotted class ``cls``, to build its objects fast.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``: half
    of the cost of decoding a gift. The decoder instead fills an instance of this twin
    (same base, same slots, so the same memory layout, but plain attribute stores) and
    then makes it a ``cls`` by assigning ``__class__``, which Python allows between
    layout-compatible classes. The result is exactly what ``cls(...)`` makes, as long as
    ``__init__`` does nothing but store the fields: checked here, once.
    """
    slots = cls.__dict__.get("__slots__")
    field_names = tuple(f.name for f in dataclasses.fields(cls))
    if slots is None or tuple(slots) != field_names or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a plain slotted dataclass")
    twin = type(f"{cls.__name__}Builder", cls.__bases__, {"__slots__": field_names, "__module__": __name__})
    probe: Any = object.__new__(twin)
    probe.__class__ = cls  # TypeError here, at import, if the layouts ever differ
    return twin


# ---------------------------------------------------------------- encoding


def reference_fields(obj: WireObject) -> dict[str, Any]:
    """The wire map of ``obj`` without ``t``: its non-``None`` fields in declaration order."""
    out: dict[str, Any] = {}
    for spec in obj.FIELDS:
        value = getattr(obj, spec.name)
        if value is None:
            continue
        out[spec.name] = reference_value(value)
    return out


def reference_value(value: Any) -> Any:
    """A field's value as it travels: wire objects become maps, tuples lists."""
    if isinstance(value, WireObject):
        return reference_fields(value)
    if isinstance(value, tuple):
        return [reference_fields(v) if isinstance(v, WireObject) else v for v in value]
    return value


def reference_wire(obj: WireObject) -> dict[str, Any]:
    out: dict[str, Any] = {"t": obj.TYPE}
    out.update(reference_fields(obj))
    return out


def _value_expression(shape: Shape, var: str, names: dict[str, Any], tag: str) -> str:
    """The expression writing ``var`` of ``shape`` to the wire, as reference_value would."""
    if isinstance(shape, Scalar):
        # Written as they are: mypy holds these to str/int/bool (or their enum subclasses),
        # which reference_value also passes through unchanged.
        return var
    names["reference_value"] = reference_value
    if isinstance(shape, Nested):
        names[f"cls{tag}"] = shape.cls
        names[f"enc{tag}"] = compile_encoder(shape.cls, with_type=False)
        return f"(enc{tag}({var}) if type({var}) is cls{tag} else reference_value({var}))"
    if isinstance(shape, ListOf) and isinstance(shape.item, Nested):
        names[f"cls{tag}"] = shape.item.cls
        names[f"enc{tag}"] = compile_encoder(shape.item.cls, with_type=False)
        names["reference_item"] = _reference_item
        return (f"([enc{tag}(x) if type(x) is cls{tag} else reference_item(x) for x in {var}]"
                f" if type({var}) is tuple else reference_value({var}))")
    return f"reference_value({var})"


def _reference_item(value: Any) -> Any:
    return reference_fields(value) if isinstance(value, WireObject) else value


_encoders: dict[tuple[type, bool], Encoder] = {}


def compile_encoder(cls: type, *, with_type: bool = True) -> Encoder:
    """The wire map of a ``cls`` object, ``t`` first when ``with_type`` (a message)."""
    cached = _encoders.get((cls, with_type))
    if cached is not None:
        return cached
    specs: tuple[FieldSpec, ...] = cls.FIELDS  # type: ignore[attr-defined]
    names: dict[str, Any] = {"TYPE": getattr(cls, "TYPE", None),
                             "slow": reference_wire if with_type else reference_fields}
    lines = ["def encode(obj):"]
    # The leading required fields go into one dict display; if any of them is None (a
    # message built wrongly), the reference decides what is written.
    leading = []
    for spec in specs:
        if spec.optional:
            break
        leading.append(spec)
    for i, spec in enumerate(leading):
        lines.append(f"    v{i} = obj.{spec.name}")
    if leading:
        lines += ["    if " + " or ".join(f"v{i} is None" for i in range(len(leading))) + ":",
                  "        return slow(obj)"]
    items = ["'t': TYPE"] if with_type else []
    items += [f"{spec.name!r}: {_value_expression(spec.shape, f'v{i}', names, str(i))}"
              for i, spec in enumerate(leading)]
    lines.append("    out = {" + ", ".join(items) + "}")
    for i, spec in enumerate(specs[len(leading):], start=len(leading)):
        lines += [f"    v{i} = obj.{spec.name}", f"    if v{i} is not None:",
                  f"        out[{spec.name!r}] = {_value_expression(spec.shape, f'v{i}', names, str(i))}"]
    lines.append("    return out")
    encoder: Encoder = _define("\n".join(lines) + "\n", names, "encode", f"encoder of {cls.__name__}")
    _encoders[(cls, with_type)] = encoder
    return encoder


def _define(source: str, names: dict[str, Any], function: str, what: str) -> Any:
    """Compile generated ``source`` and return ``function``, with ``names`` bound to it.

    The names become closure cells of a wrapper, not globals: a cell is read as fast as a
    local, a global or builtin costs a dictionary lookup or two on every use.
    """
    cells = {**_BUILTINS, **names}
    body = "".join(f"    {line}\n" for line in source.splitlines())
    wrapper = f"def make({', '.join(cells)}):\n{body}    return {function}\n"
    namespace: dict[str, Any] = {}
    # The source is built above from the class tables only, never from any input.
    exec(compile(wrapper, f"<protocol.compiled: {what}>", "exec"), namespace)
    return namespace["make"](**cells)


_BUILTINS: dict[str, Any] = {"type": type, "len": len, "isinstance": isinstance, "tuple": tuple, "dict": dict}
