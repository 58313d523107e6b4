"""Validation of requests against the dbt Cloud OpenAPI specs, v2 and v3 (path, method, query, body).

Used by the emulator (every request it receives) and by the tests (every request the client sends).
The spec is not vendored: it is read from ``DBT_CLOUD_OPENAPI_SPEC`` or from ``../shared/dbt-cloud/``
beside the project checkout. The v3 spec (webhook subscriptions) is ``openapi-v3.yaml`` in the same folder.

Its dependencies (PyYAML, jsonschema, referencing) come with the ``[local]`` extra: without them, importing this
module (and so the emulator) raises an :class:`ImportError` that names the missing module and the extra. The
client package :mod:`dbt_cloud_gate.dbtcloud_api` never imports this module.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dbt_cloud_gate.dbtcloud_api.errors import local_extra_missing

_DISTRIBUTIONS = {"yaml": "PyYAML", "jsonschema": "jsonschema", "referencing": "referencing"}

try:
    import yaml
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
except ImportError as exc:
    raise local_extra_missing(exc, "the dbt Cloud spec validator and emulator", _DISTRIBUTIONS) from exc

SPEC_ENV = "DBT_CLOUD_OPENAPI_SPEC"
_SPEC_URI = "urn:dbt-cloud-openapi-v2"


def default_spec_path(version: str = "v2") -> Path | None:
    """Where the spec is: ``$DBT_CLOUD_OPENAPI_SPEC``, else ``shared/dbt-cloud/openapi-v2.yaml`` beside the repo.

    ``version="v3"``: ``openapi-v3.yaml`` in the folder of the v2 spec.
    """
    name = f"openapi-{version}.yaml"
    configured = os.environ.get(SPEC_ENV)
    if configured:
        return Path(configured) if version == "v2" else Path(configured).with_name(name)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "dbt-cloud" / name
        if candidate.is_file():
            return candidate
        sibling = parent.parent / "shared" / "dbt-cloud" / name
        if sibling.is_file():
            return sibling
    return None


@dataclass(frozen=True)
class _Operation:
    template: str
    pattern: re.Pattern[str]
    literal_segments: int
    method: str
    spec: dict[str, Any]


class SpecValidator:
    """Checks one request at a time against the spec; ``validate`` returns a list of problems (empty if valid)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._registry: Registry[Any] = Registry().with_resource(
            _SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
        )
        self._operations: list[_Operation] = []
        for template, item in (spec.get("paths") or {}).items():
            regex = (
                "^"
                + re.sub(
                    r"\\\{(\w+)\\\}",
                    lambda m: f"(?P<{m.group(1)}>.+)" if m.group(1) == "remainder" else f"(?P<{m.group(1)}>[^/]+)",
                    re.escape(template),
                )
                + "$"
            )
            literal = sum(1 for part in template.split("/") if part and not part.startswith("{"))
            for method, operation in item.items():
                if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                    self._operations.append(_Operation(template, re.compile(regex), literal, method.upper(), operation))
        self._operations.sort(key=lambda op: -op.literal_segments)

    def _schema_validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        if "$ref" in schema and schema["$ref"].startswith("#"):
            schema = {"$ref": _SPEC_URI + schema["$ref"]}
        return Draft202012Validator(schema, registry=self._registry)

    def match(self, method: str, path: str) -> tuple[_Operation | None, dict[str, str], bool]:
        """The operation for ``method path``, its path parameters, and whether the path exists at all."""
        path_known = False
        for op in self._operations:
            found = op.pattern.match(path)
            if not found:
                continue
            path_known = True
            if op.method == method.upper():
                return op, found.groupdict(), True
        return None, {}, path_known

    def validate(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]] | None = None,
        body: Any = None,
        *,
        has_body: bool = False,
    ) -> list[str]:
        """Problems with this request against the spec; ``body`` is the parsed JSON body, if any."""
        op, path_params, path_known = self.match(method, path)
        if op is None:
            if path_known:
                return [f"method {method} is not allowed on {path}"]
            return [f"no operation in the spec matches {path}"]
        problems: list[str] = []
        declared = {(p["in"], p["name"]): p for p in op.spec.get("parameters", [])}
        for name, value in path_params.items():
            param = declared.get(("path", name))
            if param is not None:
                problems += _check_scalar(f"path parameter {name}", value, param.get("schema", {}))
        for name, values in (query or {}).items():
            param = declared.get(("query", name))
            if param is None:
                problems.append(f"query parameter {name!r} is not in the spec for {op.method} {op.template}")
                continue
            for value in values:
                problems += _check_query(name, value, param.get("schema", {}))
        request_body = op.spec.get("requestBody")
        if request_body is None:
            if has_body and body not in (None, {}, b""):
                problems.append(f"{op.method} {op.template} takes no request body")
            return problems
        if body is None:
            if request_body.get("required"):
                problems.append(f"{op.method} {op.template} requires a JSON body")
            return problems
        schema = request_body.get("content", {}).get("application/json", {}).get("schema")
        if schema:
            for error in sorted(self._schema_validator(schema).iter_errors(body), key=lambda e: list(e.path)):
                where = "/".join(str(part) for part in error.path) or "body"
                problems.append(f"{where}: {error.message}")
        return problems


def _check_scalar(label: str, value: str, schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    if kind == "integer" and not re.fullmatch(r"-?\d+", value):
        return [f"{label} must be an integer, got {value!r}"]
    if kind == "boolean" and value.lower() not in ("true", "false", "1", "0"):
        return [f"{label} must be a boolean, got {value!r}"]
    if "enum" in schema and value not in [str(v) for v in schema["enum"]]:
        return [f"{label} must be one of {schema['enum']}, got {value!r}"]
    return []


def _check_query(name: str, value: str, schema: dict[str, Any]) -> list[str]:
    if schema.get("type") == "array":
        text = value.strip()
        if not (text.startswith("[") and text.endswith("]")):
            return [f"query parameter {name} must be a bracketed list like [1,2], got {value!r}"]
        items = [item.strip().strip("\"'") for item in text[1:-1].split(",") if item.strip()]
        problems: list[str] = []
        for item in items:
            problems += _check_scalar(f"an item of query parameter {name}", item, schema.get("items", {}))
        return problems
    if "oneOf" in schema:
        options = [_check_scalar(f"query parameter {name}", value, option) for option in schema["oneOf"]]
        return [] if any(not found for found in options) else options[0]
    return _check_scalar(f"query parameter {name}", value, schema)


@lru_cache(maxsize=4)
def _load(path: str) -> SpecValidator:
    text = Path(path).read_text(encoding="utf-8")
    spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    return SpecValidator(spec)


def load_default_validator(version: str = "v2") -> SpecValidator | None:
    """The validator for the default spec location (``v2`` or ``v3``), or ``None`` if the spec cannot be found."""
    path = default_spec_path(version)
    if path is None or not path.is_file():
        return None
    return _load(str(path))
