"""The code's shape, checked: dependencies run one way (no import circle among service modules), and every error
a caller can see comes from the one tree in service/errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

from service.errors import AijobsError, ApiError, JobRequestError, LimitExceeded, StoreUnavailable

SERVICE = Path(__file__).resolve().parent.parent / "service"


def import_graph() -> dict[str, set[str]]:
    """Module → the service modules it imports (at any depth in the file: a function-level import counts too)."""
    modules: dict[str, Path] = {}
    for path in SERVICE.rglob("*.py"):
        name = ".".join(path.relative_to(SERVICE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_service_modules() -> None:
    graph = import_graph()
    assert "service.api.app" in graph and graph["service.api.app"]  # the walk saw the code
    assert cycles(graph) == []


def test_the_finder_sees_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layers_point_down() -> None:
    """Nothing below the API imports it; models and errors import nothing of ours."""
    graph = import_graph()
    for name, deps in graph.items():
        if not name.startswith("service.api"):
            assert not {d for d in deps if d.startswith("service.api")}, name
    assert graph["service.models"] == set()
    assert graph["service.errors"] == set()


def test_each_error_knows_its_status_code_and_whether_to_retry() -> None:
    store = StoreUnavailable()
    assert (store.status, store.code, store.retryable, store.headers) == (
        503,
        "store_unavailable",
        True,
        {"Retry-After": "5"},
    )
    refused = JobRequestError("invalid_input", "'input' is required.", field="input")
    assert (refused.status, refused.retryable, refused.extra) == (422, False, {"field": "input"})
    assert JobRequestError("job_finished", "ended", status=409).status == 409
    limited = LimitExceeded(429, "rate_limited", "wait", retry_after=12)
    assert (limited.retryable, limited.headers) == (True, {"Retry-After": "12"})
    assert LimitExceeded(413, "input_too_large", "smaller").retryable is False
    assert ApiError(404, "job_not_found", "No job with that id.").retryable is False
    assert all(issubclass(cls, AijobsError) for cls in (ApiError, JobRequestError, LimitExceeded, StoreUnavailable))


def test_settings_are_parsed_once_in_config() -> None:
    """MAX_INPUT_BYTES, AI_PRICES and AI_PROVIDERS are parsed by Settings at start; everyone else reads the parsed
    values (Settings.input_byte_caps, .prices, .providers) instead of parsing the strings again."""
    parsers = {"parse_byte_caps", "parse_limits", "parse_prices", "parse_providers"}
    callers = set()
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in parsers:
                callers.add(path.relative_to(SERVICE).as_posix())
    assert callers == {"config.py"}
