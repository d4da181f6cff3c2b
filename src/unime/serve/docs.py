"""GET /docs: a reference of the endpoints rendered on the server from the app's OpenAPI schema (method, path,
summary, request fields and types), so that it reads offline too: FastAPI's Swagger UI loads its scripts from a
CDN (a blank page without the internet); it stays at /docs/swagger."""

from __future__ import annotations

import json
from html import escape
from typing import Any

STYLE = ("body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
         "code,td{font-family:ui-monospace,monospace;font-size:13px}table{border-collapse:collapse;margin:.4em 0 1em}"
         "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}"
         "h2{font-size:17px;margin:1.4em 0 .2em}.m{font-weight:bold;color:#05a}")


def type_name(schema: dict) -> str:
    """A short name of a JSON schema's type: `string`, `list[Input]`, `"float" | "base64"`, `integer | null`."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_name(s) for s in schema[key])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if schema.get("type") == "array":
        return f"list[{type_name(schema.get('items', {}))}]"
    return str(schema.get("type", "any"))


def refs(schema: Any) -> list[str]:
    """The names of the component schemas `schema` refers to, in order, each once."""
    if isinstance(schema, dict):
        found = [schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else []
        return list(dict.fromkeys(found + [r for v in schema.values() for r in refs(v)]))
    return list(dict.fromkeys(r for v in schema for r in refs(v))) if isinstance(schema, list) else []


def fields_table(schema: dict) -> str:
    """A table of an object schema's fields: name, type, required or its default, description."""
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        need = "required" if name in required else f"default {json.dumps(prop.get('default'))}"
        rows.append(f"<tr><td>{escape(name)}</td><td>{escape(type_name(prop))}</td><td>{escape(need)}</td>"
                    f"<td>{escape(prop.get('description', ''))}</td></tr>")
    if not rows:
        return "<p>(no fields)</p>"
    head = "<tr><th>field</th><th>type</th><th>required / default</th><th>description</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def reference_html(openapi: dict, *, openapi_url: str, swagger_url: str) -> str:
    """The page: each operation of `openapi` (method, path, summary, its request body's fields), then the
    request types they refer to (their fields)."""
    schemas = openapi.get("components", {}).get("schemas", {})
    title = escape(openapi.get("info", {}).get("title", "API"))
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title} API reference</title>"
           f"<style>{STYLE}</style></head><body><h1>{title} API reference</h1>",
           f"<p>{escape(openapi.get('info', {}).get('description', ''))}</p>",
           f"<p>The schema: <a href='{escape(openapi_url)}'>{escape(openapi_url)}</a>; the search page: "
           f"<a href='/'>/</a>; Swagger UI (loads its scripts from a CDN): <a href='{escape(swagger_url)}'>"
           f"{escape(swagger_url)}</a>. /v1/* and /metrics need <code>Authorization: Bearer KEY</code> unless the "
           f"server runs with --no-auth.</p>"]
    request_types: list[str] = []
    for path, ops in openapi.get("paths", {}).items():
        for method, op in ops.items():
            out.append(f"<h2 id='{escape(method)}-{escape(path)}'><span class='m'>{escape(method.upper())}</span> "
                       f"<code>{escape(path)}</code></h2><p>{escape(op.get('summary', ''))}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is not None:
                names = refs(body)
                out.append(f"<p>request body: {escape(type_name(body))}</p>")
                if "$ref" in body:
                    out.append(fields_table(schemas.get(names[0], {})))
                request_types += refs([schemas.get(n, {}) for n in names])
    nested = [n for n in dict.fromkeys(request_types) if n in schemas and "properties" in schemas[n]]
    if nested:
        out.append("<h2>request types</h2>")
        for name in nested:
            out.append(f"<h3 id='{escape(name)}'>{escape(name)}</h3>{fields_table(schemas[name])}")
    out.append("</body></html>")
    return "\n".join(out)
