#!/usr/bin/env python3
"""Write ``docs/api.md``, the HTTP API reference, from the server's OpenAPI document.

No server is started: ``create_app().openapi()`` builds the document from the routes, and the
error table comes from the status mapping in ``sandlot/server/http_errors.py``. The output
depends on the code only, so ``tests/unit/test_api_docs.py`` can regenerate it and compare::

    python scripts/api_docs.py           # write docs/api.md
    python scripts/api_docs.py --check   # exit 1 if docs/api.md is out of date
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"
sys.path.insert(0, str(ROOT))

# Sections in this order; a tag not listed here follows, alphabetically.
TAG_ORDER = (
    "sandboxes", "sessions", "executions", "processes", "files", "code", "keys", "health"
)  # fmt: skip
TAG_TITLES = {
    "sandboxes": "Sandboxes",
    "sessions": "Durable sessions",
    "executions": "Commands and code cells (executions)",
    "processes": "Processes and terminals",
    "files": "Files",
    "code": "Code contexts",
    "keys": "API keys",
    "health": "Health and metrics",
}
# Documented once, in the introduction, rather than under every operation.
COMMON_PARAMETERS = {("header", "authorization")}
# FastAPI's own 422 model: the server answers every error with ErrorBody instead.
FRAMEWORK_SCHEMAS = {"HTTPValidationError", "ValidationError"}
SSE = "text/event-stream"
# Fixed here: the standard library renamed some (413, 422) in Python 3.13.
PHRASES = {
    413: "Content Too Large",
    422: "Unprocessable Content",
}


def phrase(status: int) -> str:
    return PHRASES.get(status) or HTTPStatus(status).phrase


# -- text helpers ----------------------------------------------------------------------------


def rst_to_md(text: str) -> str:
    """A docstring's reStructuredText-isms as Markdown: ``x`` -> `x`, roles dropped, and a
    paragraph ending in ``::`` followed by an indented block becomes a fenced block."""
    text = inspect.cleandoc(text)
    text = re.sub(
        r":[a-z]+:`(~?)([^`]+)`",
        lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`",
        text,
    )
    text = text.replace("``", "`")
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            out.append(line.rstrip()[:-1])
            j = i + 2
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith("    ")):
                block.append(lines[j][4:])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```", *block, "```", ""]
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def one_line(text: str | None) -> str:
    """Text for a table cell: one line, pipes escaped."""
    if not text:
        return ""
    text = rst_to_md(text) if "``" in text else text
    return " ".join(text.split()).replace("|", "\\|")


def code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return "`" + text.replace("|", "\\|") + "`"


def slug(text: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading (with -1, -2, ... for repeats)."""
    base = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    count = seen.get(base, 0)
    seen[base] = count + 1
    return base if count == 0 else f"{base}-{count}"


# -- schemas ---------------------------------------------------------------------------------


class Schemas:
    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components
        self.used: set[str] = set()

    def resolve(self, schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        ref = schema.get("$ref")
        if ref is None:
            return None, schema
        name = ref.rsplit("/", 1)[-1]
        return name, self.components[name]

    def link(self, name: str) -> str:
        self.used.add(name)
        return f"[{name}](#{name.lower()})"

    def type_of(self, schema: dict[str, Any]) -> str:
        """A schema as a short phrase: ``string``, ``array of string``, a model link."""
        if "$ref" in schema:
            return self.link(self.resolve(schema)[0] or "")
        if "anyOf" in schema:
            kinds = [s for s in schema["anyOf"] if s.get("type") != "null"]
            text = " or ".join(self.type_of(s) for s in kinds) or "null"
            return text + (" or null" if len(kinds) < len(schema["anyOf"]) else "")
        if "const" in schema:
            return code(schema["const"])
        if "enum" in schema:
            return "one of " + ", ".join(code(v) for v in schema["enum"])
        kind = schema.get("type")
        if kind == "array":
            return "array of " + self.type_of(schema.get("items", {}))
        if kind == "object":
            values = schema.get("additionalProperties")
            if isinstance(values, dict) and values:
                return "object of " + self.type_of(values)
            return "object"
        if kind is None:
            return "any"
        fmt = schema.get("format")
        return f"{kind} ({fmt})" if fmt else str(kind)

    @staticmethod
    def constraints(schema: dict[str, Any]) -> list[str]:
        """Bounds, lengths, patterns and the default, from the schema or its non-null branch."""
        parts: list[str] = []
        branches = [schema, *[s for s in schema.get("anyOf", []) if s.get("type") != "null"]]
        for s in branches:
            for key, text in (
                ("minimum", ">= {}"),
                ("exclusiveMinimum", "> {}"),
                ("maximum", "<= {}"),
                ("exclusiveMaximum", "< {}"),
                ("minLength", "length >= {}"),
                ("maxLength", "length <= {}"),
                ("minItems", "items >= {}"),
                ("maxItems", "items <= {}"),
            ):
                if key in s:
                    value = s[key]
                    if isinstance(value, float) and value.is_integer():
                        value = int(value)
                    parts.append(text.format(value))
            if "pattern" in s:
                parts.append("matches " + code(s["pattern"]))
        if "default" in schema and schema["default"] is not None:
            parts.append("default " + code(schema["default"]))
        return parts

    def describe(self, schema: dict[str, Any], description: str | None = None) -> str:
        text = one_line(description or schema.get("description"))
        extra = "; ".join(self.constraints(schema))
        if text and extra:
            return f"{text} ({extra})"
        return text or extra

    def field_table(self, schema: dict[str, Any]) -> list[str]:
        required = set(schema.get("required", []))
        rows = ["| field | type | required | description |", "|---|---|---|---|"]
        for name, prop in schema.get("properties", {}).items():
            rows.append(
                f"| `{name}` | {self.type_of(prop)} | {'yes' if name in required else 'no'} "
                f"| {self.describe(prop)} |"
            )
        if len(rows) == 2:
            return ["No fields."]
        if schema.get("additionalProperties") is False:
            rows += ["", "Other fields are refused (422)."]
        return rows


# -- operations ------------------------------------------------------------------------------


def parameters_table(schemas: Schemas, parameters: list[dict[str, Any]]) -> list[str]:
    rows = ["| name | in | type | required | description |", "|---|---|---|---|---|"]
    for p in parameters:
        if (p["in"], p["name"].lower()) in COMMON_PARAMETERS:
            continue
        schema = p.get("schema", {})
        rows.append(
            f"| `{p['name']}` | {p['in']} | {schemas.type_of(schema)} "
            f"| {'yes' if p.get('required') else 'no'} "
            f"| {schemas.describe(schema, p.get('description'))} |"
        )
    return rows if len(rows) > 2 else []


def request_body(schemas: Schemas, body: dict[str, Any] | None) -> list[str]:
    if not body:
        return []
    content = body.get("content", {})
    out = ["**Request body**" + ("" if body.get("required") else " (optional)") + ":"]
    if "application/json" in content:
        name, schema = schemas.resolve(content["application/json"].get("schema", {}))
        head = f"JSON (`{name}`)" if name else "JSON"
        summary = one_line(schema.get("description"))
        out += ["", head + (f": {summary}" if summary else "."), "", *schemas.field_table(schema)]
    else:
        for media in sorted(content):
            out += ["", f"Raw bytes (`{media}`), streamed."]
    return out


def responses(schemas: Schemas, answers: dict[str, Any]) -> list[str]:
    rows = ["| status | meaning | body |", "|---|---|---|"]
    for status in sorted(answers):
        answer = answers[status]
        content = answer.get("content", {})
        description = one_line(answer.get("description"))
        if description == "Successful Response":
            description = phrase(int(status))
        if int(status) >= 400:
            body = "[error body](#errors)"
            if description == "Validation Error":
                description = "the request does not match the schema"
        elif not content:
            body = "none"
        else:
            kinds = []
            for media in sorted(content):
                schema = content[media].get("schema")
                if media == "application/json" and not schema and len(content) > 1:
                    continue  # FastAPI's default for a raw Response: not what is sent
                if media == SSE:
                    kinds.append("Server-Sent Events ([streams](#streams-server-sent-events))")
                elif media == "application/json" and schema:
                    kinds.append("JSON " + schemas.type_of(schema))
                else:
                    kinds.append(f"`{media}`")
            body = "; ".join(kinds)
        rows.append(f"| {status} | {description} | {body} |")
    return rows


def operation(
    schemas: Schemas, method: str, path: str, op: dict[str, Any], seen: dict[str, int]
) -> tuple[str, list[str]]:
    title = op.get("summary") or f"{method.upper()} {path}"
    anchor = slug(title, seen)
    out = [f"### {title}", "", f"`{method.upper()} {path}`", ""]
    if op.get("description"):
        out += [rst_to_md(op["description"]), ""]
    table = parameters_table(schemas, op.get("parameters", []))
    if table:
        out += ["**Parameters**:", "", *table, ""]
    body = request_body(schemas, op.get("requestBody"))
    if body:
        out += [*body, ""]
    out += ["**Responses**:", "", *responses(schemas, op.get("responses", {})), ""]
    return anchor, out


# -- the introduction ------------------------------------------------------------------------


def error_table() -> list[str]:
    """Every status the server answers errors with, and the codes that come with it."""
    from sandlot import errors
    from sandlot.server import http_errors

    by_status: dict[int, set[str]] = {}
    # The bases stand for failures of the server itself, which answer 500 (below); the
    # relay's and `remote up`'s errors never come from the server; private classes, and
    # classes defined elsewhere (whatever a session happened to import), have no code of
    # their own in the table.
    skip = (errors.SandlotError, errors.ServerError, errors.ProvisionError)
    pending = [*errors.SandlotError.__subclasses__()]
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in seen or issubclass(cls, errors.RelayError):
            continue
        seen.add(cls)
        pending += cls.__subclasses__()
        if cls in skip or cls.__name__.startswith("_") or cls.__module__ != errors.__name__:
            continue
        status = http_errors.status_of(cls.__new__(cls))
        by_status.setdefault(status, set()).add(cls.code)
    # Answers the framework gives before a route runs (see the HTTP error handler).
    for status, name in http_errors.HTTP_CODES.items():
        by_status.setdefault(status, set()).add(name)
    by_status.setdefault(500, set()).update({"server_error", "sandlot_error"})
    rows = ["| status | codes |", "|---|---|"]
    for status in sorted(by_status):
        codes = ", ".join(f"`{c}`" for c in sorted(by_status[status]))
        rows.append(f"| {status} {phrase(status)} | {codes} |")
    return rows


def introduction(schemas: Schemas, idempotent: list[str]) -> list[str]:
    from sandlot.api import ErrorBody
    from sandlot.server import app, deps, sse

    error_schema = ErrorBody.model_json_schema()
    keepalive = sse.KEEPALIVE.decode().strip()
    return [
        "## Conventions",
        "",
        "### Authentication",
        "",
        "Send an API key as `Authorization: Bearer <token>` on every `/v1` call (`sandlot keys "
        "create` makes one; see [server.md](server.md)). While no key exists, which the server "
        f"allows on a loopback address only, every caller is the admin of the tenant "
        f"`{deps.LOCAL_TENANT}`; once one exists, every `/v1` call needs a valid key. "
        "A missing, unknown or revoked key answers 401 with `WWW-Authenticate: Bearer`; the "
        "`keys` routes need an admin key (403 otherwise). The header is not repeated in the "
        "parameter tables below. `/healthz`, `/readyz` and `/metrics` need no key.",
        "",
        "### Errors",
        "",
        rst_to_md(app.__doc__ or "").split("\n\n", 1)[-1],
        "",
        *schemas.field_table(error_schema),
        "",
        "```json",
        '{"code": "sandbox_not_found", "message": "no sandbox with id \'sb-0\'", '
        '"details": {"id": "sb-0"}}',
        "```",
        "",
        "A request that does not match the schema answers 422 `invalid_argument` with "
        '`details.errors` (`[{"loc": [...], "msg": "..."}]`). The status comes from the '
        "error's class (the most specific one in the table of "
        "`sandlot/server/http_errors.py`); other "
        "framework answers carry `http_<status>` as their code. An unexpected failure of the "
        "server answers 500 `server_error`. The operations below list the statuses the OpenAPI "
        "document declares; any of them may also answer the errors of this table.",
        "",
        *error_table(),
        "",
        "### Streams (Server-Sent Events)",
        "",
        rst_to_md(sse.__doc__ or ""),
        "",
        "Event kinds include `started`, `stdout`, `stderr`, `result`, `progress`, `truncated`, "
        "`gap` (output lost across a server restart: `bytes`, `offset`), "
        "`exit` and `error` for executions (an execution's stream ends after its `exit` or "
        "`error`), and `sandbox` (`created`, `adopted` after a restart, `fallback`, `ended`) for "
        "the session. Where retention dropped the events a read reaches back to, one "
        "`pruned` event stands in for them, numbered as the last one dropped (`data`: "
        "`through`, `why`, `at`; see [server.md](server.md#retention-and-storage)). A line "
        f"`{keepalive}` (an SSE comment) is sent after {deps.KEEPALIVE_SECONDS:g} s without "
        "events, so proxies keep the connection open.",
        "",
        "### Resuming: `Last-Event-ID`",
        "",
        "Every event's `id` is its sequence number in the session's log, gapless and never "
        "reused. A client that lost its connection asks again with `Last-Event-ID: <last id "
        "seen>` (or `?after=<id>`; the header wins when both are given) and gets every later "
        "event exactly once. Executions run on the server, not on the connection: nothing "
        "stops when a client goes away.",
        "",
        "### WebSockets: terminals",
        "",
        "Terminals are WebSocket endpoints, which an OpenAPI document does not list: "
        "`/v1/sandboxes/{id}/pty` starts a process on a new pseudo-terminal, "
        "`/v1/sandboxes/{id}/pty/{pid}?offset=N` reattaches to a process and replays its "
        "output from byte `N`. Binary messages carry the terminal's bytes both ways, text "
        "messages JSON control messages (`resize`, `signal`, `kill`; `started`, `attached`, "
        "`exit`, `error`). The key may also be offered as the subprotocol "
        "`sandlot.bearer.<key>` next to `sandlot.pty`, for browsers. The wire format is in "
        "[server.md](server.md#terminals-over-websocket); the routes below list and resize "
        "the processes.",
        "",
        "### `Idempotency-Key`",
        "",
        f"{_enumerate(idempotent)} take an "
        "`Idempotency-Key` header (at most 200 characters): a repeated key gets the first "
        "answer (marked `Idempotent-Replayed: true`), so a call whose answer was lost can be "
        "sent again without creating a second sandbox or running a command twice. The same key "
        "with a different method, path or body answers 409 `idempotency_conflict`, as does a "
        f"repeat while the first call is still running after {deps.IDEMPOTENCY_WAIT:g} s. Keys "
        "belong to the caller's tenant.",
        "",
    ]


# -- the page --------------------------------------------------------------------------------


def render() -> str:
    from sandlot.server.app import create_app

    spec = create_app().openapi()
    schemas = Schemas(spec.get("components", {}).get("schemas", {}))
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((method, path, op))
    tags = [t for t in TAG_ORDER if t in by_tag] + sorted(set(by_tag) - set(TAG_ORDER))

    seen: dict[str, int] = {}
    for heading in ("HTTP API reference", "Contents", "Conventions", "Authentication"):
        slug(heading, seen)
    idempotent = [
        f"`{method.upper()} {path}`"
        for path, operations in spec["paths"].items()
        for method, op in operations.items()
        if any(p["name"] == "Idempotency-Key" for p in op.get("parameters", []))
    ]
    intro = introduction(schemas, idempotent)
    sections: list[str] = []
    contents = ["## Contents", "", "- [Conventions](#conventions)"]
    for tag in tags:
        title = TAG_TITLES.get(tag, tag.capitalize())
        contents.append(f"- [{title}](#{slug(title, seen)})")
        sections += [f"## {title}", ""]
        module_doc = _tag_doc(tag)
        if module_doc:
            sections += [module_doc, ""]
        for method, path, op in by_tag[tag]:
            anchor, lines = operation(schemas, method, path, op, seen)
            contents.append(f"  - [`{method.upper()} {path}`](#{anchor})")
            sections += lines
    models = _models(schemas, seen)
    contents.append("- [Models](#models)")
    page = [
        "# HTTP API reference",
        "",
        "<!-- Generated by scripts/api_docs.py from the server's OpenAPI document: do not edit "
        "by hand; run `python scripts/api_docs.py`. -->",
        "",
        "The HTTP API of `sandlot serve` ([server.md](server.md)). A running server also serves "
        "this description as OpenAPI at `/openapi.json` (interactive at `/docs`). Bodies are "
        "JSON unless noted; times are ISO 8601 in UTC; durations are seconds.",
        "",
        *contents,
        "",
        *intro,
        *sections,
        *models,
    ]
    text = "\n".join(page)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def _enumerate(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _health_doc() -> str:
    from sandlot.server.metrics import Metrics

    rows = ["| metric | type | what |", "|---|---|---|"]
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        rows.append(f"| `{name}` | {family.type} | {one_line(family.documentation)} |")
    return "\n".join(
        [
            "No API key is needed here. `/healthz` answers while the process runs; its "
            "`status` is `degraded` while a circuit breaker to another server is not closed. "
            "`/readyz` answers 503 `server_error` when the database does not answer within "
            "5 s. `/metrics` has these families (a histogram also has its `_bucket`, `_sum` "
            "and `_count` series):",
            "",
            *rows,
        ]
    )


def _tag_doc(tag: str) -> str:
    import importlib

    if tag == "health":
        return _health_doc()
    module = {
        "sandboxes": "api_sandboxes",
        "executions": "api_executions",
        "files": "api_files",
        "code": "api_code",
        "keys": "api_keys",
    }.get(tag)
    if module is None:
        return ""
    doc = importlib.import_module(f"sandlot.server.{module}").__doc__ or ""
    return rst_to_md(doc)


def _refs(schema: Any) -> set[str]:
    """The names of the models a schema refers to, at any depth."""
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[-1]} if "$ref" in schema else set()
        return found.union(*(_refs(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_refs(v) for v in schema))
    return set()


def _models(schemas: Schemas, seen: dict[str, int]) -> list[str]:
    """Every model the page links to, and the models those refer to, alphabetically."""
    names = set(schemas.used)
    while True:
        more = set().union(*(_refs(schemas.components[n]) for n in names)) - names
        if not more:
            break
        names |= more
    out = ["## Models", ""]
    for name in sorted(names - FRAMEWORK_SCHEMAS):
        schema = schemas.components[name]
        anchor = slug(name, seen)
        assert anchor == name.lower(), f"model {name} would be #{anchor}: rename a heading"
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [rst_to_md(schema["description"]), ""]
        out += [*schemas.field_table(schema), ""]
    return out


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python scripts/api_docs.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
