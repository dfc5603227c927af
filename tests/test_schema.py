"""schema.parse's compiled validators: the first error, its message and path, as the checks read them; to_dict as
dataclasses.asdict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from service.schema import ValidationError, constraint, parse, to_dict


@dataclass(frozen=True)
class Part:
    role: Literal["user", "assistant"]
    text: str = field(metadata=constraint(min_len=1, max_len=5))


@dataclass(frozen=True)
class Request:
    parts: list[Part] = field(metadata=constraint(min_len=1, max_len=2))
    count: int = field(default=3, metadata=constraint(ge=1, le=10))
    ratio: float | None = None
    flag: bool = False
    tags: dict[str, str] = field(default_factory=dict, metadata=constraint(max_len=2, key_max_len=3, item_max_len=4))
    inner: Part | None = None


OK = [{"role": "user", "text": "a"}]


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ([], "", "must be a JSON object"),
        ({"parts": [], "zz": 1, "aa": 2}, "aa", "is not a known field"),
        ({"count": 2}, "parts", "is required"),
        ({"parts": None}, "parts", "must not be null"),
        ({"parts": "x"}, "parts", "must be a list"),
        ({"parts": []}, "parts", "must not be empty"),
        ({"parts": [{"role": "user", "text": "a"}] * 3}, "parts", "is too long: at most 2 items (got 3)"),
        ({"parts": [{"role": "bot", "text": "a"}]}, "parts[0].role", "must be one of 'user', 'assistant'"),
        ({"parts": [{"role": "user", "text": "abcdef"}]}, "parts[0].text", "is too long: at most 5 characters (got 6)"),
        ({"parts": [{"role": "user"}]}, "parts[0].text", "is required"),
        ({"parts": [{"role": "user", "text": "a", "x": 1}]}, "parts[0].x", "is not a known field"),
        ({"parts": OK, "count": 1.5}, "count", "must be an integer"),
        ({"parts": OK, "count": True}, "count", "must be an integer"),
        ({"parts": OK, "count": 11}, "count", "must be at most 10"),
        ({"parts": OK, "ratio": "1"}, "ratio", "must be a number"),
        ({"parts": OK, "flag": 1}, "flag", "must be true or false"),
        ({"parts": OK, "tags": []}, "tags", "must be a JSON object"),
        ({"parts": OK, "tags": {"abcd": "x"}}, "tags", "has a key longer than 3 characters ('abcd'…)"),
        ({"parts": OK, "tags": {"a": "xxxxx"}}, "tags.a", "is too long: at most 4 characters (got 5)"),
        ({"parts": OK, "inner": {"role": "user", "text": ""}}, "inner.text", "must not be empty"),
    ],
)  # fmt: skip
def test_the_first_error_has_its_path_and_message(data: Any, path: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(Request, data)
    assert (caught.value.field, caught.value.message) == (path, message)


def test_valid_input_fills_defaults_and_converts_as_asdict() -> None:
    data = {"parts": [{"role": "user", "text": "hi"}], "count": 2.0, "ratio": 1, "tags": {"a": "b"}, "inner": None}
    parsed = parse(Request, data)
    assert parsed == Request(parts=[Part("user", "hi")], count=2, ratio=1.0, tags={"a": "b"})
    assert type(parsed.count) is int and type(parsed.ratio) is float
    plain = to_dict(parsed)
    assert plain == dataclasses.asdict(parsed)
    assert plain["parts"] is not parsed.parts and plain["tags"] is not parsed.tags  # copies, as asdict makes
    assert to_dict(5) == 5 and to_dict(Request) is Request
