"""The OpenAPI schema, made to say what the server sends.

FastAPI documents a 422 for every route with parameters or a body, but a
request that fails validation is answered 400 ``{"error": ...}``
(service/http_errors.py): the 422 and its schemas are dropped. A handler
routed at both ``.../{name}/...`` and ``.../{name}/versions/{version}/...``
reads the version through ``deps.VersionDep``, which FastAPI cannot
document as a path parameter: it is added where the path has one.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "title": "Version"},
    "description": "A version of the model (a positive integer); only the served one answers.",
}
VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = documented(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def documented(schema: dict[str, Any]) -> dict[str, Any]:
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            operation.get("responses", {}).pop("422", None)
            parameters = operation.setdefault("parameters", [])
            if "{version}" in path and not any(p.get("name") == "version" for p in parameters):
                parameters.append(dict(VERSION_PARAMETER))
            if not parameters:
                del operation["parameters"]
    schemas = schema.get("components", {}).get("schemas", {})
    for name in VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    return schema
