"""Restricted API categories, as Triton's ``--http-restricted-api`` and
``--grpc-restricted-protocol`` spell them (``src/restricted_features.h``,
docs/customization_guide/inference_protocols.md, "Limit endpoint access").

A group is ``<category>[,<category>...]:<key>=<value>``: a request to a
route or RPC of a listed category must carry the header (gRPC: metadata)
``key`` with exactly ``value``, else it is refused before anything else is
looked at, with Triton's words:

- HTTP: 403, ``{"error": "This API is restricted, expecting header '<key>'"}``;
- gRPC: ``UNAVAILABLE``, ``This protocol is restricted, expecting header
  'triton-grpc-protocol-<key>'`` (Triton prefixes the gRPC key).

A category may be in one group only. Which bnfold route falls in which
category: ``http_category`` (docs/service.md, "Restricted APIs");
the gRPC methods: ``GRPC_CATEGORIES``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .errors import Forbidden

CATEGORIES = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
GRPC_PREFIX = "triton-grpc-protocol-"  # Triton's kRestrictedProtocolHeaderTemplate

GRPC_CATEGORIES: dict[str, str] = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}

# HTTP paths by category, first match wins (``{m}``: a model name, with an
# optional ``/versions/{v}``). Paths in no category (the page, its assets,
# /docs, /openapi.json, /metrics) are never restricted.
_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
_HTTP: tuple[tuple[re.Pattern[str], str, frozenset[str] | None], ...] = tuple(
    (re.compile(pattern), category, frozenset(methods) if methods else None)
    for pattern, category, methods in (
        (r"/v2/health/(?:live|ready)", "health", None),
        (_MODEL + r"/ready", "health", None),
        (r"/v2/models/stats", "statistics", None),
        (_MODEL + r"/stats", "statistics", None),
        (_MODEL + r"/config", "model-config", None),
        (_MODEL + r"/(?:infer|classify)", "inference", None),
        (r"/v1/models/[^/]+:predict", "inference", None),
        (_MODEL + r"/parity", "inference", {"POST"}),  # runs both graphs
        (_MODEL + r"/parity", "metadata", None),  # the stored report
        (_MODEL + r"/trace/setting", "trace", None),
        (r"/v2/trace/setting", "trace", None),
        (r"/v2/logging", "logging", None),
        (r"/v2/(?:system|cuda)sharedmemory(?:/.*)?", "shared-memory", None),
        (r"/v2/repository(?:/.*)?", "model-repository", None),
        (r"/web/api/models", "model-repository", None),  # the index, without reasons
        (r"/web/api/models/[^/]+/versions/[^/]+", "metadata", None),
        (r"/v2", "metadata", None),
        (_MODEL, "metadata", None),
    )
)


def http_category(method: str, path: str) -> str | None:
    """The restricted-API category of an HTTP request; None for none."""
    if not path.startswith(("/v2", "/v1/", "/web/api/")):
        return None
    path = path.rstrip("/") or "/"
    for pattern, category, methods in _HTTP:
        if (methods is None or method in methods) and pattern.fullmatch(path):
            return category
    return None


@dataclass(frozen=True)
class Restriction:
    header: str  # as configured (gRPC: with Triton's prefix); matched in any case
    value: str


def parse_group(group: str, option: str) -> tuple[list[str], str, str]:
    """``<categories>:<key>=<value>`` (Triton's ParseGenericConfigOption)."""
    categories, colon, setting = group.partition(":")
    key, equals, value = setting.partition("=")
    if not colon or not equals or not categories or not key or not value:
        raise ValueError(
            f"--{option} option format is '<config name>:<setting>=<value>'. Got {group}"
        )
    return categories.split(","), key, value


def parse(
    groups: Iterable[str], option: str, kind: str, prefix: str = ""
) -> dict[str, Restriction]:
    """Each restricted category and its header, from the option's groups;
    ValueError with Triton's words for an unknown or repeated category."""
    out: dict[str, Restriction] = {}
    for group in groups:
        categories, key, value = parse_group(group, option)
        for category in categories:
            if category not in CATEGORIES:
                raise ValueError(f"unknown restricted {kind} '{category}'")
            if category in out:
                raise ValueError(
                    f"restricted {kind} '{category}' can not be specified in multiple config groups"
                )
            out[category] = Restriction(prefix + key, value)
    return out


class Restrictions:
    """The restricted categories of one protocol and their check."""

    def __init__(self, restrictions: Mapping[str, Restriction], words: str) -> None:
        self._restrictions = dict(restrictions)
        self._words = words  # "API" (HTTP) or "protocol" (gRPC)

    @classmethod
    def http(cls, groups: Iterable[str]) -> Restrictions:
        return cls(parse(groups, "http-restricted-api", "api"), "API")

    @classmethod
    def grpc(cls, groups: Iterable[str]) -> Restrictions:
        return cls(parse(groups, "grpc-restricted-protocol", "protocol", GRPC_PREFIX), "protocol")

    def __bool__(self) -> bool:
        return bool(self._restrictions)

    def check(self, category: str | None, header: Callable[[str], str | None]) -> None:
        """Refuse (``Forbidden``) a request of a restricted ``category`` whose
        ``header(name)`` is not the configured value."""
        if category is None:
            return
        restriction = self._restrictions.get(category)
        if restriction is None:
            return
        given = header(restriction.header.lower())  # header names ignore case
        if given is None or not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), restriction.value.encode()
        ):
            raise Forbidden(
                f"This {self._words} is restricted, expecting header '{restriction.header}'"
            )
