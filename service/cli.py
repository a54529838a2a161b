"""``bnfold serve``: run the model server with uvicorn.

``serve`` is a plain function whose typer options are generated from
``Settings`` (service/settings.py): every setting but the token (a secret
does not belong on a command line, where ``ps`` shows it) is a flag named
after the field (``--grpc-port``; a trailing ``_s`` is dropped and its value
is in SECONDS: ``--poll``, ``--load-timeout``), with the field's description
as its help. The bnfold CLI registers it (``app.command("serve")(serve)``)
and ``python -m bnfold.service`` runs it alone. Every flag is also a
``BNFOLD_*`` environment variable (docs/service.md); a flag given on the
command line wins.
"""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from .connections import uvicorn_options
from .logs import configure_format
from .metrics import MULTIPROC_ENV, MULTIPROC_FILES
from .middleware import configure_logging
from .settings import ENV_PREFIX, Settings, settings_env
from .tracing import parse_trace_config

NOT_FLAGS = {"api_token"}  # BNFOLD_API_TOKEN only
# Triton's name of a setting, taken beside bnfold's (Triton's error messages name it).
TRITON_FLAGS = {"max_body_bytes": "--http-max-input-size"}


def flag_name(field: str) -> str:
    """``--grpc-port`` for ``grpc_port``; ``--poll`` for ``poll_s`` (seconds)."""
    return "--" + field.removesuffix("_s").replace("_", "-")


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _option(field: str, info: FieldInfo) -> inspect.Parameter:
    """The typer option of one setting: its type (a choice is a string that
    Settings checks), its flag, and its description as the help."""
    kind: Any = info.annotation
    if get_origin(kind) is Literal:
        choices = ", ".join(map(str, get_args(kind)))
        kind = str
    else:
        choices = ""
    flag = flag_name(field)
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    if field in TRITON_FLAGS:
        decls.append(TRITON_FLAGS[field])
    described = str(info.description)
    if choices and choices not in described:
        described += f" ({choices})"
    help_text = f"{described} (env {ENV_PREFIX}{field.upper()}; default {_shown(info.default)})"
    option = typer.Option(
        *decls,
        help=help_text,
        metavar="SECONDS" if field.endswith("_s") else None,
        show_default=False,
    )
    return inspect.Parameter(
        field,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


FLAGS = [_option(f, info) for f, info in Settings.model_fields.items() if f not in NOT_FLAGS]


def _check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """A port another process holds is a usage error (exit 2) named here,
    not a traceback from inside uvicorn or gRPC."""
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
                f"choose {flag})"
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


@contextmanager
def _startup_failure_is_not_parity() -> Iterator[None]:
    """uvicorn exits 3 when the server does not start (its log says why);
    3 is bnfold's parity failure, so serve exits 1 instead."""
    try:
        yield
    except SystemExit as e:
        if e.code == STARTUP_FAILURE:
            raise SystemExit(1) from None
        raise


def serve(**flags: Any) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2).

    Every option (and the token, BNFOLD_API_TOKEN) can be set as a BNFOLD_*
    environment variable; see docs/service.md.
    """
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = flag_name(str(first["loc"][0])) if first["loc"] else "settings"
        raise typer.BadParameter(f"{where}: {first['msg']}") from None
    if not settings.repo.is_dir():
        raise typer.BadParameter(f"model repository {settings.repo} is not a folder")
    if settings.log_file is not None and not settings.log_file.parent.is_dir():
        raise typer.BadParameter(
            f"--log-file {settings.log_file}: no folder {settings.log_file.parent}"
        )
    trace_file = parse_trace_config(settings.trace_config).file
    if trace_file is not None and not Path(trace_file).resolve().parent.is_dir():
        raise typer.BadParameter(
            f"--trace-config triton,file={trace_file}: no folder {Path(trace_file).parent}"
        )
    _check_port_free(settings.host, settings.port)
    if settings.grpc_port != 0 and settings.grpc_port == settings.port:
        raise typer.BadParameter(f"--grpc-port {settings.grpc_port} is the HTTP --port too")
    _check_port_free(settings.host, settings.grpc_port, "--grpc-port, or 0 to turn gRPC off")
    if settings.allow_metrics and settings.metrics_port != 0:
        metrics_host = settings.metrics_address or settings.host
        if metrics_host == settings.host and settings.metrics_port in (
            settings.port,
            settings.grpc_port,
        ):
            raise typer.BadParameter(
                f"--metrics-port {settings.metrics_port} is the HTTP or gRPC port too"
            )
        _check_port_free(
            metrics_host, settings.metrics_port, "--metrics-port, or 0 for no metrics port"
        )
    # Worker processes build their own Settings from the environment.
    os.environ.update(settings_env(settings))
    configure_logging(settings.log_level, settings.log_file)
    configure_format(settings.log_format, settings.log_escape)
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # ours carries the request id
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_s),
        **uvicorn_options(settings),
    }
    if settings.log_format != "text":
        common["log_config"] = None  # uvicorn's loggers go through ours (service/logs.py)
    with metrics_dir(settings.workers), _startup_failure_is_not_parity():
        if settings.workers == 1:
            from .app import create_app

            uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()
        else:
            config = uvicorn.Config(
                "bnfold.service.app:create_app", factory=True, workers=settings.workers, **common
            )
            _Supervisor(config, sockets=[config.bind_socket()]).run()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of ``--workers N``, which also lets go of its own
    copy of the listening socket once told to stop. The workers hold theirs
    through the drain; when they close them, a new connection is refused at
    once, as with one worker, instead of waiting in the kernel's queue of
    the parent's copy until the requests in flight finish and it exits."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


# typer reads the options from the signature and the annotations.
serve.__signature__ = inspect.Signature(FLAGS, return_annotation=None)  # type: ignore[attr-defined]
serve.__annotations__ = {p.name: p.annotation for p in FLAGS} | {"return": None}
