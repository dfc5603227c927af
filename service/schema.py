"""Typed input at the edge: dataclasses validated from JSON, and the same classes exported as JSON Schema.

Small on purpose: the job inputs need strings, numbers, booleans, enums, lists of these or of nested
dataclasses, and string-keyed objects of these (a response's `metadata`). Constraints sit in field metadata
(`min_len`, `max_len`, `ge`, `le`; for an object `max_len` counts its entries, `key_max_len` and `item_max_len`
bound each key and string value), so the rule that validates a request is the rule that documents it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ValidationError(ValueError):
    """Input that does not fit its schema; `field` is a dotted path to the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def constraint(
    *,
    min_len: int | None = None,
    max_len: int | None = None,
    ge: float | None = None,
    le: float | None = None,
    key_max_len: int | None = None,
    item_max_len: int | None = None,
    doc: str | None = None,
) -> dict[str, Any]:
    given: dict[str, Any] = {"min_len": min_len, "max_len": max_len, "ge": ge, "le": le, "doc": doc}
    given |= {"key_max_len": key_max_len, "item_max_len": item_max_len}
    return {k: v for k, v in given.items() if v is not None}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved once per class: get_type_hints re-evaluates every annotation on each call (~20 µs a submit)."""
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def as_integer(value: Any) -> int | None:
    """`value` as an int if JSON Schema calls it an integer (so 1.0 too, as JSON has one number type), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _check_len(path: str, value: Any, meta: dict[str, Any], unit: str) -> None:
    if "min_len" in meta and len(value) < meta["min_len"]:
        raise ValidationError(
            path, "must not be empty" if meta["min_len"] == 1 else f"needs at least {meta['min_len']} {unit}"
        )
    if "max_len" in meta and len(value) > meta["max_len"]:
        raise ValidationError(path, f"is too long: at most {meta['max_len']} {unit} (got {len(value)})")


def _check_range(path: str, value: float, meta: dict[str, Any]) -> None:
    if "ge" in meta and value < meta["ge"]:
        raise ValidationError(path, f"must be at least {meta['ge']}")
    if "le" in meta and value > meta["le"]:
        raise ValidationError(path, f"must be at most {meta['le']}")


Check = Callable[[Any, str], Any]  # (JSON value, its dotted path) -> the validated value, or ValidationError


@functools.cache
def _compiled(cls: type[T]) -> Callable[[Any, str], T]:
    """The class's validator, built once: walking the type hints per field per request (get_origin, get_args, the
    metadata copied, dataclasses.fields twice) was most of a submit's validation cost. Same checks in the same
    order, so the same first error with the same message and path."""
    hints = _hints(cls)
    known = frozenset(f.name for f in dataclasses.fields(cls))
    plans: list[tuple[str, bool, Check]] = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        plans.append((f.name, required, _checker(hints[f.name], dict(f.metadata))))

    def from_dict(data: Any, prefix: str) -> T:
        if not isinstance(data, dict):
            raise ValidationError(prefix, "must be a JSON object")
        if not known.issuperset(data):
            unknown = sorted(set(data) - known)[0]
            raise ValidationError(f"{prefix}.{unknown}" if prefix else unknown, "is not a known field")
        values: dict[str, Any] = {}
        for name, required, check in plans:
            if name in data:
                values[name] = check(data[name], f"{prefix}.{name}" if prefix else name)
            elif required:
                raise ValidationError(f"{prefix}.{name}" if prefix else name, "is required")
        return cls(**values)

    return from_dict


def _checker(tp: Any, meta: dict[str, Any]) -> Check:
    """The check of one value of type `tp` under the constraints `meta`, chosen once from the type."""
    tp, optional = _unwrap_optional(tp)
    check = _plain_checker(tp, meta)

    def nullable(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    def not_null(value: Any, path: str) -> Any:
        if value is None:
            raise ValidationError(path, "must not be null")
        return check(value, path)

    return nullable if optional else not_null


def _plain_checker(tp: Any, meta: dict[str, Any]) -> Check:  # one branch per supported type
    origin = get_origin(tp)
    has_len = "min_len" in meta or "max_len" in meta
    has_range = "ge" in meta or "le" in meta
    if origin is Literal:
        choices = get_args(tp)
        wrong = f"must be one of {', '.join(map(repr, choices))}"

        def literal(value: Any, path: str) -> Any:
            if value not in choices:
                raise ValidationError(path, wrong)
            return value

        return literal
    if origin is list:
        (item_tp,) = get_args(tp)
        item = _checker(item_tp, {})

        def array(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise ValidationError(path, "must be a list")
            if has_len:
                _check_len(path, value, meta, "items")
            return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return array
    if origin is dict:
        entry = _checker(get_args(tp)[1], {"max_len": meta["item_max_len"]} if "item_max_len" in meta else {})
        key_max = meta.get("key_max_len")

        def obj(value: Any, path: str) -> Any:  # string keys (JSON has no other), values of one type
            if not isinstance(value, dict):
                raise ValidationError(path, "must be a JSON object")
            if has_len:
                _check_len(path, value, meta, "entries")
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key_max is not None and len(key) > key_max:
                    raise ValidationError(path, f"has a key longer than {key_max} characters ({key[:20]!r}…)")
                out[key] = entry(item, f"{path}.{key}")
            return out

        return obj
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        nested = tp

        def dataclass(value: Any, path: str) -> Any:  # looked up when used: a class may contain itself
            return _compiled(nested)(value, path)

        return dataclass
    if tp is bool:

        def boolean(value: Any, path: str) -> Any:
            if not isinstance(value, bool):
                raise ValidationError(path, "must be true or false")
            return value

        return boolean
    if tp is int:

        def integer(value: Any, path: str) -> Any:
            number = as_integer(value)
            if number is None:
                raise ValidationError(path, "must be an integer")
            if has_range:
                _check_range(path, number, meta)
            return number

        return integer
    if tp is float:

        def number(value: Any, path: str) -> Any:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationError(path, "must be a number")
            if has_range:
                _check_range(path, value, meta)
            return float(value)

        return number
    if tp is str:

        def string(value: Any, path: str) -> Any:
            if not isinstance(value, str):
                raise ValidationError(path, "must be a string")
            if has_len:
                _check_len(path, value, meta, "characters")
            return value

        return string

    def unsupported(value: Any, path: str) -> Any:  # raised when met, as before, not when the class is first used
        raise TypeError(f"unsupported schema type {tp!r} at {path}")

    return unsupported


def parse(cls: type[T], data: Any) -> T:
    """Validate JSON-decoded `data` into an instance of the dataclass `cls`."""
    return _compiled(cls)(data, "")


_PLAIN = frozenset({str, int, float, bool, type(None)})


def to_dict(value: Any) -> Any:
    """dataclasses.asdict for a dataclass instance (anything else as it is), without asdict's generic walk per value:
    a validated input holds JSON values, copied as asdict copies them (lists and dicts anew, the rest deep)."""
    if type(value) in _PLAIN or isinstance(value, type) or not dataclasses.is_dataclass(value):
        return value
    return _plain_dict(value)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain_dict(obj: Any) -> dict[str, Any]:
    return {name: _plain(getattr(obj, name)) for name in _field_names(obj.__class__)}


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_plain(v) for v in value]
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_dict(value)
    return dataclasses.asdict(_Box(value))["value"]  # anything else (tuples, sets, objects) exactly as asdict does


@dataclasses.dataclass
class _Box:
    value: Any


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12 subset) of a dataclass, as `parse` enforces it."""
    hints = _hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        props[f.name] = _type_schema(hints[f.name], dict(f.metadata))
        if f.default is not dataclasses.MISSING:
            props[f.name]["default"] = f.default
        elif f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema["description"] = cls.__doc__.strip()
    return schema


def _type_schema(tp: Any, meta: dict[str, Any]) -> dict[str, Any]:
    tp, optional = _unwrap_optional(tp)
    origin = get_origin(tp)
    out: dict[str, Any]
    if origin is Literal:
        out = {"enum": list(get_args(tp))}
    elif origin is list:
        out = {"type": "array", "items": _type_schema(get_args(tp)[0], {})}
        if "min_len" in meta:
            out["minItems"] = meta["min_len"]
        if "max_len" in meta:
            out["maxItems"] = meta["max_len"]
    elif origin is dict:
        item_meta = {"max_len": meta["item_max_len"]} if "item_max_len" in meta else {}
        out = {"type": "object", "additionalProperties": _type_schema(get_args(tp)[1], item_meta)}
        if "max_len" in meta:
            out["maxProperties"] = meta["max_len"]
        if "key_max_len" in meta:
            out["propertyNames"] = {"maxLength": meta["key_max_len"]}
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        out = json_schema(tp)
    else:
        out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
        if tp is str:
            if "min_len" in meta:
                out["minLength"] = meta["min_len"]
            if "max_len" in meta:
                out["maxLength"] = meta["max_len"]
        if "ge" in meta:
            out["minimum"] = meta["ge"]
        if "le" in meta:
            out["maximum"] = meta["le"]
    if "doc" in meta:
        out["description"] = meta["doc"]
    if optional:
        out = {"anyOf": [out, {"type": "null"}]}
    return out
