"""``bnfold serve``: run the model server with uvicorn.

``serve`` is a plain function with typer ``Annotated`` options; the bnfold
CLI registers it (``app.command("serve")(serve)``) and ``python -m service``
runs it alone. Every option is also a ``BNFOLD_*`` environment variable
(docs/service.md); a flag given on the command line wins.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from .metrics import MULTIPROC_ENV, MULTIPROC_FILES
from .middleware import configure_logging
from .settings import Settings, settings_env


def _default(field: str) -> str:
    """A flag's default for ``--help``: the setting's, used when neither the flag
    nor its BNFOLD_* variable is given."""
    return str(Settings.model_fields[field].default)


def _check_port_free(host: str, port: int) -> None:
    """A port another process holds is a usage error (exit 2) named here,
    not a traceback from inside uvicorn."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise typer.BadParameter(
                f"cannot listen on {host}:{port}: {e.strerror} (another server there? "
                "choose --port)"
            ) from None


@contextmanager
def metrics_dir(workers: int) -> Iterator[Path | None]:
    """The folder where ``workers`` processes keep their Prometheus values.

    ``PROMETHEUS_MULTIPROC_DIR`` when given (emptied of a previous run's
    files, or its counts would be added in), else a fresh temporary folder,
    removed at exit. Set in the environment before any worker starts: each
    worker's prometheus_client reads it when imported. One process without
    the variable keeps plain in-memory metrics.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if not given and workers == 1:
        yield None
        return
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="bnfold-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for pattern in MULTIPROC_FILES:
        for stale in path.glob(pattern):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def serve(
    repo: Annotated[
        Path | None,
        typer.Option(
            help="Model repository folder (docs/repository.md). "
            f"(env BNFOLD_REPO; default {_default('repo')})"
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Interface to bind; 0.0.0.0 for all. "
            f"(env BNFOLD_HOST; default {_default('host')})"
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help=f"TCP port. (env BNFOLD_PORT; default {_default('port')})")
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            help="gRPC port (Triton's GRPCInferenceService, same models and limits); 0: no "
            f"gRPC. (env BNFOLD_GRPC_PORT; default {_default('grpc_port')})"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes sharing the port. "
            f"(env BNFOLD_WORKERS; default {_default('workers')})"
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="auto (CUDA when it loads, else CPU), cuda (required) or cpu. "
            f"(env BNFOLD_DEVICE; default {_default('device')})"
        ),
    ] = None,
    device_id: Annotated[
        int | None,
        typer.Option(
            help=f"CUDA device ordinal. (env BNFOLD_DEVICE_ID; default {_default('device_id')})"
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="critical, error, warning, info or debug. "
            f"(env BNFOLD_LOG_LEVEL; default {_default('log_level')})"
        ),
    ] = None,
    poll: Annotated[
        float | None,
        typer.Option(
            "--poll",
            help="Watch the repository every SECONDS and load new, changed or removed versions "
            "atomically (0: only on an explicit load). (env BNFOLD_POLL_S; default 0)",
            metavar="SECONDS",
        ),
    ] = None,
    fold_on_load: Annotated[
        bool | None,
        typer.Option(
            "--fold-on-load/--no-fold-on-load",
            help="Fold the BNs of each model in memory when it loads; serve the folded graph "
            "only if it matches the original on the serving device (a model's configuration "
            "can override: fold_on_load). (env BNFOLD_FOLD_ON_LOAD; default off)",
        ),
    ] = None,
    strict_readiness: Annotated[
        bool | None,
        typer.Option(
            "--strict-readiness/--no-strict-readiness",
            help="/v2/health/ready is 503 while any model that should serve is not ready, an "
            "empty repository included; --no-strict-readiness: ready once started. "
            "(env BNFOLD_STRICT_READINESS; default strict)",
        ),
    ] = None,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2).

    Every option (and more: batching, limits, token) can be set as a
    BNFOLD_* environment variable; see docs/service.md.
    """
    flags = {
        "repo": repo,
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "workers": workers,
        "device": device,
        "device_id": device_id,
        "log_level": log_level,
        "poll_s": poll,
        "fold_on_load": fold_on_load,
        "strict_readiness": strict_readiness,
    }
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise typer.BadParameter(f"{where}: {first['msg']}") from None
    if not settings.repo.is_dir():
        raise typer.BadParameter(f"model repository {settings.repo} is not a folder")
    _check_port_free(settings.host, settings.port)
    # Worker processes build their own Settings from the environment.
    os.environ.update(settings_env(settings))
    configure_logging(settings.log_level)
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # ours carries the request id
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_s),
    }
    with metrics_dir(settings.workers):
        if settings.workers == 1:
            from .app import create_app

            uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()  # type: ignore[arg-type]
        else:
            uvicorn.run(
                "bnfold.service.app:create_app",
                factory=True,
                workers=settings.workers,
                **common,  # type: ignore[arg-type]
            )
