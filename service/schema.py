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


def _check_value(path: str, tp: Any, value: Any, meta: dict[str, Any]) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValidationError(path, "must not be null")
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ValidationError(path, f"must be one of {', '.join(map(repr, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValidationError(path, "must be a list")
        (item_tp,) = get_args(tp)
        _check_len(path, value, meta, "items")
        return [_check_value(f"{path}[{i}]", item_tp, v, {}) for i, v in enumerate(value)]
    if origin is dict:
        return _check_object(path, get_args(tp)[1], value, meta)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValidationError(path, "must be true or false")
        return value
    if tp is int:
        number = as_integer(value)
        if number is None:
            raise ValidationError(path, "must be an integer")
        _check_range(path, number, meta)
        return number
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(path, "must be a number")
        _check_range(path, value, meta)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValidationError(path, "must be a string")
        _check_len(path, value, meta, "characters")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def _check_object(path: str, item_tp: Any, value: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """A JSON object with string keys (JSON has no other) and values of one type."""
    if not isinstance(value, dict):
        raise ValidationError(path, "must be a JSON object")
    _check_len(path, value, meta, "entries")
    item_meta = {"max_len": meta["item_max_len"]} if "item_max_len" in meta else {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if "key_max_len" in meta and len(key) > meta["key_max_len"]:
            raise ValidationError(path, f"has a key longer than {meta['key_max_len']} characters ({key[:20]!r}…)")
        out[key] = _check_value(f"{path}.{key}", item_tp, item, item_meta)
    return out


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


def _from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    if not isinstance(data, dict):
        raise ValidationError(prefix, "must be a JSON object")
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(f"{prefix}.{unknown[0]}" if prefix else unknown[0], "is not a known field")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValidationError(path, "is required")
            continue
        values[f.name] = _check_value(path, hints[f.name], data[f.name], dict(f.metadata))
    return cls(**values)


def parse(cls: type[T], data: Any) -> T:
    """Validate JSON-decoded `data` into an instance of the dataclass `cls`."""
    return _from_dict(cls, data)


def to_dict(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


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
