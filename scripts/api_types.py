"""TypeScript types for the aijobs API, generated from its OpenAPI contract: writes static/api-types.d.ts.

Why our own generator and not `openapi-typescript`: the contract is OpenAPI 3.2 so that it can describe each
Server-Sent Event (`itemSchema`, one alternative per event kind, its `data` a JSON string with a `contentSchema`),
and the event types are what a front end needs most. The standard tools read 3.0/3.1 and type such a stream as
`unknown` or a plain string. The contract uses a small part of JSON Schema (service/api/openapi.py and
service/schema.py write all of it), so this maps exactly that part and refuses anything else: a contract change
it does not understand fails the types test instead of quietly becoming `unknown`.

    scripts/api-types           rewrite static/api-types.d.ts from the contract the code builds
    scripts/api-types --check   exit 1 if the committed file differs (tests/test_frontend_types.py does this too)

Usable as a module: `render(contract) -> str` (the test feeds it the live server's GET /api/openapi.json).
Never imported by the service.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "static" / "api-types.d.ts"

# Component names that would shadow a TypeScript or DOM global where they are imported.
GLOBALS = {"Error": "ApiError"}
# Shapes used in several places, named once (by where the contract first defines them); every identical schema
# anywhere else refers to the name. A pointer that no longer resolves is an error, so a renamed field is noticed.
SHARED = {
    "JobStatus": "/components/schemas/Job/properties/status",
    "JobProgress": "/components/schemas/Job/properties/progress",
    "JobFailure": "/components/schemas/Job/properties/error/anyOf/0",
    "Usage": "/components/schemas/Job/properties/usage/anyOf/0",
    "QueuePlace": "/components/schemas/Job/properties/queue/anyOf/0",
    "Attempt": "/components/schemas/Job/properties/attempts/items",
    "JobLinks": "/components/schemas/Job/properties/links",
    # a snapshot event's job: the Job without its links (a Job read by polling fits it too)
    "EventJob": "/paths/~1api~1jobs~1{job_id}~1events/get/responses/200/content/text~1event-stream/itemSchema/oneOf/0"
    "/properties/data/contentSchema/properties/job",
    "User": "/paths/~1api~1me/get/responses/200/content/application~1json/schema/properties/user",
}
KNOWN = {
    # what each key means here; anything else in a schema is an error
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "description",
    "title",
    "default",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "maxProperties",
    "propertyNames",
    "contentMediaType",
    "contentSchema",
}
BOUNDS = [
    ("minimum", "min"),
    ("maximum", "max"),
    ("minLength", "min length"),
    ("maxLength", "max length"),
    ("minItems", "min items"),
    ("maxItems", "max items"),
    ("uniqueItems", "unique items"),
    ("maxProperties", "max entries"),
]
SCALARS = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean", "null": "null"}
IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
HEADER = """\
// aijobs API types, generated from the OpenAPI contract (GET /api/openapi.json) by scripts/api-types: do not edit.
// tests/test_frontend_types.py regenerates it from the running server and fails when this file differs.
//
//   import type { Job, JobEvent, SubmitJobRequest } from "/static/api-types";
//
// Job, HistoryJob, History, Stats, ApiError: the contract's components. JobSnapshotEvent … JobPositionEvent: the
// JSON of each Server-Sent Event's `data` (and of each WebSocket event message), by `kind`; JobEvent is their union.
// SubmitJobRequest: POST /api/jobs, one alternative per job type (JobInputs maps a type to its input).
// Operations: every operation by its operationId, with its method, path, parameters, body and answer.
"""


def pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def pointer(document: dict[str, Any], path: str) -> Any:
    node: Any = document
    for raw in path.strip("/").split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        try:
            node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError):
            raise SystemExit(f"api-types: the contract has no {path} (SHARED in scripts/api_types.py)") from None
    return node


def key(schema: Any) -> str:
    """Identity of a schema for naming: its content without the words (a description does not change a type)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("description", "title", "default")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(schema), sort_keys=True)


def literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def doc(schema: dict[str, Any], indent: str) -> str:
    """The description and the rules TypeScript cannot say, as JSDoc (shown by editors on hover)."""
    lines = [" ".join(schema["description"].split())] if schema.get("description") else []
    rules = []
    for word, name in BOUNDS:
        if word in schema:
            rules.append(f"{name} {schema[word]}")
    if "format" in schema:
        rules.append(schema["format"])
    if "pattern" in schema:
        rules.append(f"pattern {schema['pattern']}")
    if rules:
        lines.append("; ".join(rules))
    if "default" in schema:
        lines.append(f"@default {literal(schema['default'])}")
    if not lines:
        return ""
    text = "\n".join(lines).replace("*/", "*\\/")
    if "\n" not in text and len(indent) + len(text) < 110:
        return f"{indent}/** {text} */\n"
    body = "".join(f"{indent} * {line}\n" for line in text.split("\n"))
    return f"{indent}/**\n{body}{indent} */\n"


class Generator:
    def __init__(self, contract: dict[str, Any]) -> None:
        self.contract = contract
        self.names: dict[str, str] = {}  # schema key -> type name
        self.order: list[tuple[str, dict[str, Any]]] = []  # named types, in the order they are emitted
        self.taken: set[str] = set()

    # -- naming -----------------------------------------------------------------------------------------------
    def name(self, name: str, schema: dict[str, Any]) -> str:
        """Give `schema` a type name (and every identical schema the same one)."""
        k = key(schema)
        if k in self.names:
            return self.names[k]
        if name in self.taken:
            raise SystemExit(f"api-types: two different schemas want the name {name}")
        self.taken.add(name)
        self.names[k] = name
        self.order.append((name, schema))
        return name

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if ref is None:
            return schema
        if not ref.startswith("#/"):
            raise SystemExit(f"api-types: only local $refs are understood, not {ref}")
        resolved: dict[str, Any] = pointer(self.contract, ref[1:])
        return resolved

    # -- schemas to TypeScript --------------------------------------------------------------------------------
    def ts(self, schema: Any, indent: str = "", *, top: str | None = None) -> str:
        """The TypeScript for a schema; a schema that has a name (other than the one being defined) is the name."""
        if schema is True or schema == {}:
            return "unknown"
        if not isinstance(schema, dict):
            raise SystemExit(f"api-types: not a schema: {schema!r}")
        unknown = set(schema) - KNOWN
        if unknown:
            raise SystemExit(f"api-types: schema keywords it cannot map: {sorted(unknown)} in {schema}")
        if "$ref" in schema:
            target = schema["$ref"]
            prefix = "#/components/schemas/"
            if not target.startswith(prefix):
                raise SystemExit(f"api-types: a $ref outside components/schemas: {target}")
            name = target[len(prefix) :]
            return GLOBALS.get(name, name)
        k = key(schema)
        if k in self.names and self.names[k] != top:
            return self.names[k]
        if "const" in schema:
            return literal(schema["const"])
        if "enum" in schema:
            return " | ".join(literal(v) for v in schema["enum"])
        for word in ("anyOf", "oneOf"):
            if word in schema:
                parts = [self.ts(s, indent) for s in schema[word]]
                return " | ".join(f"({p})" if "=>" in p else p for p in dict.fromkeys(parts))
        kind = schema.get("type")
        if isinstance(kind, list):
            return " | ".join(self.ts({**schema, "type": t}, indent) for t in kind)
        if kind == "object" or "properties" in schema:
            return self.object(schema, indent)
        if kind == "array":
            item = self.ts(schema.get("items", {}), indent)
            return f"Array<{item}>" if not IDENT.match(item) and item not in SCALARS.values() else f"{item}[]"
        if kind == "string" and schema.get("contentMediaType") == "application/json" and "contentSchema" in schema:
            raise SystemExit("api-types: a JSON string outside an event stream's data")
        if kind in SCALARS:
            return SCALARS[kind]
        raise SystemExit(f"api-types: cannot map {schema}")

    def object(self, schema: dict[str, Any], indent: str) -> str:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = schema.get("additionalProperties", True)
        inner = indent + "  "
        lines = []
        for prop, sub in props.items():
            name = prop if IDENT.match(prop) else literal(prop)
            optional = "" if prop in required else "?"
            lines.append(f"{doc(sub, inner)}{inner}{name}{optional}: {self.ts(sub, inner)};\n")
        missing = required - set(props)
        for prop in sorted(missing):  # required with no schema of its own (a map's keys): any value
            lines.append(f"{inner}{prop}: unknown;\n")
        if extra is not False:
            # With declared fields the index signature is `unknown`: TypeScript wants every field to fit it.
            value = self.ts(extra, inner) if isinstance(extra, dict) and not props else "unknown"
            lines.append(f"{inner}[key: string]: {value};\n")
        if not lines:
            return "Record<string, never>"
        return "{\n" + "".join(lines) + indent + "}"

    # -- the document ---------------------------------------------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        """Name the shapes a front end refers to, and describe each operation."""
        for name, path in SHARED.items():
            self.name(name, pointer(self.contract, path))
        for name, schema in self.contract["components"]["schemas"].items():
            self.name(GLOBALS.get(name, name), schema)
        operations: dict[str, Any] = {}
        events: list[str] = []
        for path, methods in self.contract["paths"].items():
            for method, op in methods.items():
                op_id = op["operationId"]
                entry: dict[str, Any] = {"method": method.upper(), "path": path}
                params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
                if params:
                    entry["params"] = {
                        "type": "object",
                        "required": [p["name"] for p in params if p.get("required")],
                        "properties": {
                            p["name"]: {**p["schema"], "description": p.get("description", "")} for p in params
                        },
                        "additionalProperties": False,
                    }
                body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
                if body is not None:
                    entry["body"] = self.request_body(op_id, body)
                    entry["body_required"] = op["requestBody"].get("required", False)
                for status, response in op["responses"].items():
                    if not status.startswith("2"):
                        continue
                    content = response.get("content", {})
                    if "application/json" in content:
                        schema = content["application/json"]["schema"]
                        entry["response"] = self.ts(schema) if "$ref" in schema else self.inline(op_id, schema)
                    elif "text/event-stream" in content:
                        entry["events"] = self.stream(content["text/event-stream"]["itemSchema"], events)
                    else:
                        entry.setdefault("response", "void")
                operations[op_id] = entry
        return {"operations": operations, "events": list(dict.fromkeys(events))}

    def inline(self, op_id: str, schema: dict[str, Any]) -> str:
        return self.name(f"{pascal(op_id)}Response", schema)

    def request_body(self, op_id: str, schema: dict[str, Any]) -> str:
        if op_id == "submitJob":
            for variant in schema["oneOf"]:
                title = pascal(variant["title"])
                self.name(f"{title}Input", variant["properties"]["input"])
                self.name(f"Submit{title}", variant)
            return self.name("SubmitJobRequest", schema)
        return self.name(f"{pascal(op_id)}Body", schema)

    def stream(self, item: dict[str, Any], events: list[str]) -> str:
        """An SSE stream: each alternative's `data` (JSON) is named by its kind; the stream is their tagged union."""
        parts = []
        for variant in item["oneOf"]:
            props = variant["properties"]
            event = props["event"]["const"]
            data = props["data"]
            if data.get("contentMediaType") != "application/json":
                raise SystemExit(f"api-types: an event whose data is not JSON: {event}")
            content = data["contentSchema"]
            known = key(content) in self.names  # the closing `error` event's data is the ApiError body
            data_type = self.ts(content) if known else self.name(f"Job{pascal(event)}Event", content)
            if "kind" in content.get("properties", {}):
                events.append(data_type)
            id_part = f"; id?: {self.ts(props['id'])}" if "id" in props else ""
            parts.append(f"{{ event: {literal(event)}; data: {data_type}{id_part} }}")
        return "".join(f"\n      | {part}" for part in parts)

    def render(self) -> str:
        described = self.collect()
        out = [HEADER]
        for name, schema in self.order:
            out.append("\n" + doc(schema, ""))
            body = self.ts(schema, top=name)
            if body.startswith("{"):
                out.append(f"export interface {name} {body}\n")
            else:
                out.append(f"export type {name} = {body};\n")
        out.append("\n/** Every event of a job as it reaches a client, told apart by `kind`. */\n")
        out.append(f"export type JobEvent = {' | '.join(described['events'])};\n")
        submit = self.contract["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        types = [v["properties"]["type"]["const"] for v in submit["oneOf"]]
        out.append("\n/** The job types this server runs. */\n")
        out.append(f"export type JobType = {' | '.join(literal(t) for t in types)};\n")
        out.append("\n/** Each job type's input. */\nexport interface JobInputs {\n")
        out.extend(f"  {t}: {pascal(t)}Input;\n" for t in types)
        out.append("}\n")
        out.append("\n/** Every operation of the contract by operationId: what to send and what comes back. */\n")
        out.append("export interface Operations {\n")
        for op_id, entry in described["operations"].items():
            fields = [f"method: {literal(entry['method'])}", f"path: {literal(entry['path'])}"]
            if "params" in entry:
                fields.append(f"params: {self.ts(entry['params'], '    ')}")
            if "body" in entry:
                fields.append(f"body{'' if entry['body_required'] else '?'}: {entry['body']}")
            if "events" in entry:
                fields.append(f"events:{entry['events']}")
            if "events" not in entry:
                fields.append(f"response: {entry.get('response', 'void')}")
            out.append(f"  {op_id}: {{\n" + "".join(f"    {f};\n" for f in fields) + "  };\n")
        out.append("}\n")
        return "".join(out)


def render(contract: dict[str, Any]) -> str:
    return Generator(contract).render()


def built_contract() -> dict[str, Any]:
    """The contract exactly as the app serves it (service.api.openapi with the default job types)."""
    sys.path.insert(0, str(ROOT))
    from service.api.openapi import build_openapi
    from service.tasks import default_registry

    return build_openapi(default_registry())


def main(argv: list[str]) -> int:
    text = render(built_contract())
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run scripts/api-types", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
