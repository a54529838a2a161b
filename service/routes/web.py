"""The web page at ``/``, its assets, and the API docs at ``/docs`` and ``/redoc``.

Everything a browser loads comes from this server: the page is plain HTML,
CSS and JavaScript in ``service/web/`` (package data, in the wheel), and
Swagger UI and ReDoc are the copies the ``fastapi-offline`` package ships.
The page reads the public routes (``/v2``, model metadata, ``.../parity``,
``.../classify``, ``.../infer``) and two JSON routes of its own:

- ``GET /web/api/models``: every model and version folder with its state,
  without the reasons, and whether the repository routes need a token. The
  names of served models are public already (``/v2/models/stats``); why a
  version does not serve can name files and hashes, so the reasons stay
  behind the token of ``POST /v2/repository/index``.
- ``GET /web/api/models/{m}/versions/{v}``: what the page draws a served
  version with: labels, preprocessing, what kind of version it is (converted,
  imported, module-converted, bare), its stored parity as labelled rows
  (service/page_data.py), the manifest's provenance and metrics (training
  curves when it holds them), and the layers of the graph the BNs were
  folded from, in order, read from the repository only.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import weakref
from pathlib import Path
from typing import Any

import onnx
from fastapi import APIRouter, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.responses import FileResponse, HTMLResponse, Response

from bnfold.contract import MODEL_FILE, REFERENCE_FILE

from ..deps import RepositoryDep, SettingsDep
from ..errors import NotFound
from ..model import ServedModel
from ..page_data import parity_notes, parity_rows, quantization_facts, version_kind
from ..parity import drop_none
from ..runtime import read_model
from .responses import MODEL, VERSION, errors

router = APIRouter(tags=["web"])

WEB = Path(__file__).resolve().parent.parent / "web"
ASSETS = {"app.js", "style.css", "favicon.svg"}
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
VENDOR = {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"}
# ReDoc's sidebar footer shows Redocly's logo from their CDN, unconditionally:
# it gets an empty picture instead, so that /redoc asks nothing of anyone else.
PATCHED = {
    "redoc.standalone.js": [
        (
            b'"https://cdn.redoc.ly/redoc/logo-mini.svg"',
            b'"data:image/svg+xml,%3Csvg%20xmlns=%27http://www.w3.org/2000/svg%27/%3E"',
        )
    ]
}
# The page runs only what this server sends: no inline script, no other origin.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)
FAVICON = "/web/favicon.svg"
MAX_LAYERS = 2000  # a page can draw this many; larger graphs are cut (and say so)
# Manifest keys the page shows; the rest (sha256s, schemas) it does not need.
PROVENANCE = ("created", "arch", "data", "training", "metrics", "source", "versions")
# Ops whose output is a shape, not data: what hangs off them is shape arithmetic.
SHAPE_OPS = {"Shape", "Size"}
# Ops that read only the type of their later inputs: CastLike(x, like) is data
# only when x is (exporters cast constants like an activation, for a bias).
TYPE_ONLY_AFTER = {"CastLike": 1}

_layers: weakref.WeakKeyDictionary[ServedModel, dict[str, Any]] = weakref.WeakKeyDictionary()


def _vendor_dir() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("the API docs need the fastapi-offline package")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


# --------------------------------------------------------------------------- the page


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def page() -> Response:
    return FileResponse(
        WEB / "index.html",
        media_type=TYPES[".html"],
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP},
    )


@router.api_route("/web/{filename}", methods=["GET", "HEAD"], include_in_schema=False)
async def asset(filename: str) -> Response:
    if filename not in ASSETS:
        raise NotFound(f"no such file: /web/{filename}")
    path = WEB / filename
    return FileResponse(path, media_type=TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


@router.get("/web/vendor/{filename}", include_in_schema=False)
async def vendor(filename: str) -> Response:
    if filename not in VENDOR:
        raise NotFound(f"no such file: /web/vendor/{filename}")
    path = _vendor_dir() / filename
    headers = {"Cache-Control": "public, max-age=86400"}
    if filename in PATCHED:
        return Response(_patched(path), media_type=TYPES[path.suffix], headers=headers)
    return FileResponse(path, media_type=TYPES[path.suffix], headers=headers)


@functools.cache
def _patched(path: Path) -> bytes:
    data = path.read_bytes()
    for old, new in PATCHED[path.name]:
        data = data.replace(old, new)
    return data


# --------------------------------------------------------------------------- API docs


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root, app = _root(request), request.app
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}/web/vendor/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/web/vendor/swagger-ui.css",
        swagger_favicon_url=f"{root}{FAVICON}",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root, app = _root(request), request.app
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}/web/vendor/redoc.standalone.js",
        redoc_favicon_url=f"{root}{FAVICON}",
        with_google_fonts=False,
    )


# --------------------------------------------------------------------------- page data


@router.get(
    "/web/api/models",
    summary="Models and versions, without reasons",
    responses=errors({503: "The server is starting."}),
)
async def summary(repo: RepositoryDep, settings: SettingsDep) -> dict[str, Any]:
    """Every model and version folder with its state (READY, LOADING,
    UNAVAILABLE), as the repository index lists them but without the
    reasons, which need the token of ``POST /v2/repository/index`` when
    ``BNFOLD_API_TOKEN`` is set (``token_required``)."""
    entries = [
        {k: v for k, v in e.items() if k in ("name", "version", "state")} for e in repo.index()
    ]
    return {"models": entries, "token_required": settings.api_token is not None}


@router.get(
    "/web/api/models/{name}/versions/{version}",
    summary="What the web page shows of a version",
    responses=errors(VERSION | MODEL),
)
async def version_details(
    name: str, version: str, repo: RepositoryDep, settings: SettingsDep
) -> dict[str, Any]:
    """Labels and preprocessing from the configuration; the version's
    ``kind`` (``converted``, ``imported``, ``module``, ``bnfold``: a manifest
    that does not say, ``bare``: no manifest); its stored parity as rows
    with labels (the manifest's comparisons, and fold on load's); provenance,
    metrics and training curves (``metrics.history``, when the manifest has
    them) from the manifest; the layers of the graph the BNs were folded
    from (``reference.onnx``, or ``model.onnx`` when it is the original), in
    graph order, with shape arithmetic left out."""
    served = repo.get(name, version)
    manifest = served.manifest.to_dict() if served.manifest else {}
    config = served.config.to_dict()
    metrics = manifest.get("metrics") or {}
    curves = metrics.get("history") if isinstance(metrics, dict) else None
    return drop_none(
        {
            "name": served.name,
            "version": served.version_str,
            "kind": version_kind(served.manifest),
            "precision": manifest.get("precision"),
            "quantization": quantization_facts(manifest.get("quantization")) or None,
            "labels": served.config.labels or manifest.get("labels") or [],
            "preprocessing": config.get("preprocessing"),
            "manifest": {k: manifest[k] for k in PROVENANCE if k in manifest},
            "parity": _stored_parity(served),
            "curves": curves if isinstance(curves, list) and curves else None,
            "graphs": await _graphs(served, settings.max_model_bytes),
        }
    )


def _stored_parity(served: ServedModel) -> dict[str, Any]:
    """The manifest's comparisons, then fold on load's, one row each."""
    manifest = served.manifest
    stored = manifest.parity if manifest else None
    rows = parity_rows(stored, manifest.precision if manifest else None)
    on_load = served.folding.parity if served.folding is not None else {}
    if on_load:
        device = str(on_load.get("device") or "this server").replace("ExecutionProvider", "")
        label = f"original vs folded graph, at load on {device}"
        rows += [r | {"key": "fold_on_load", "label": label} for r in parity_rows(on_load)]
    return {"rows": rows, "notes": parity_notes(stored)}


async def _graphs(served: ServedModel, max_bytes: int) -> dict[str, Any]:
    cached = _layers.get(served)
    if cached is None:
        cached = await asyncio.to_thread(_read_graphs, served, max_bytes)
        _layers[served] = cached
    return cached


def _read_graphs(served: ServedModel, max_bytes: int) -> dict[str, Any]:
    """``reference``: the graph with its BNs, the one the fold report speaks
    of; ``served``: the graph that serves, when it is on disk (fold on load
    keeps the folded graph in memory only)."""
    manifest = served.manifest
    if manifest is not None and REFERENCE_FILE in manifest.files:
        files = {"reference": REFERENCE_FILE, "served": MODEL_FILE}
    elif served.folding is not None:  # model.onnx is the original, folded in memory
        files = {"reference": MODEL_FILE}
    else:  # a bare model.onnx, served as it is
        files = {"served": MODEL_FILE}
    out: dict[str, Any] = {}
    for role, filename in files.items():
        try:
            data = read_model(
                served.path / filename,
                sha256=manifest.sha256(filename) if manifest else None,
                max_bytes=max_bytes,
                root=served.path.parents[1],
            )
            out[role] = {"file": filename, **layers(onnx.ModelProto.FromString(data))}
        except Exception as e:  # the file changed since it was loaded: say so, draw the rest
            out[role] = {"file": filename, "error": str(e).splitlines()[0] if str(e) else "?"}
    return out


def layers(model: onnx.ModelProto) -> dict[str, Any]:
    """The nodes that compute on data, in graph order, named as the fold
    engine names them (a node without a name, or with a name already taken,
    is ``{op}_{i}``, ``i`` its index among all nodes): the names the fold
    report's ``folded_into`` and ``rules`` use. ``ops`` counts every node."""
    data = {i.name for i in model.graph.input}
    data -= {t.name for t in model.graph.initializer}
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    for i, node in enumerate(model.graph.node):
        name = node.name
        if not name or name in seen:
            name = f"{node.op_type}_{i}" if f"{node.op_type}_{i}" not in seen else f"node_{i}"
        seen.add(name)
        inputs = node.input[: TYPE_ONLY_AFTER.get(node.op_type, len(node.input))]
        if node.op_type in SHAPE_OPS or not any(x in data for x in inputs):
            continue
        data.update(o for o in node.output if o)
        out.append({"name": name, "op": node.op_type})
    return {
        "ops": len(model.graph.node),
        "layers": out[:MAX_LAYERS],
        "truncated": len(out) > MAX_LAYERS,
    }
