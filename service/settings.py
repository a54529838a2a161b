"""Every knob of the server, read once from the environment (``BNFOLD_*``).

The CLI turns its flags into the same environment variables, so a value has
one meaning whether it came from ``bnfold serve --port 9000`` or from
``BNFOLD_PORT=9000``, and worker processes started by uvicorn see it too.
Per-model settings (batch size, queue delay, queue size) live in each
model's ``config.json``; the values here are server-wide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bnfold.contract import DEFAULT_MAX_BATCH_SIZE, DEFAULT_RTOL

ENV_PREFIX = "BNFOLD_"


class Settings(BaseSettings):
    """Server settings; each field is ``BNFOLD_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True
    )

    # --- where and how to listen
    repo: Annotated[Path, Field(description="Model repository folder.")] = Path("models")
    host: Annotated[str, Field(description="Interface to bind.")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, description="TCP port (0 picks a free one).")] = 8000
    workers: Annotated[int, Field(ge=1, le=64, description="Worker processes behind the port.")] = 1
    grpc_port: Annotated[
        int,
        Field(
            ge=0,
            le=65535,
            description="gRPC port of the same server (Triton's GRPCInferenceService; 0: no gRPC).",
        ),
    ] = 8001

    # --- execution
    device: Annotated[
        Literal["auto", "cuda", "cpu"],
        Field(description="auto: CUDA when it loads, else CPU; cuda: fail without it."),
    ] = "auto"
    device_id: Annotated[int, Field(ge=0, description="CUDA device ordinal.")] = 0
    intra_op_threads: Annotated[
        int, Field(ge=0, description="ORT threads per op (0: ORT default).")
    ] = 0
    inter_op_threads: Annotated[
        int, Field(ge=0, description="ORT threads across ops (0: default).")
    ] = 1
    ort_spinning: Annotated[
        bool, Field(description="Let ORT threads spin between ops (burns CPU the server needs).")
    ] = False
    runner_threads: Annotated[
        int, Field(ge=1, le=64, description="Threads running batches (per process, all models).")
    ] = 2
    batches_in_flight: Annotated[
        int, Field(ge=1, le=16, description="Batches of one model computing at once.")
    ] = 1
    gil_switch_ms: Annotated[
        float,
        Field(
            ge=0,
            le=100,
            description="Python's thread switch interval: how soon a runner thread back "
            "from ONNX Runtime gets the GIL (0: CPython's default, 5 ms).",
        ),
    ] = 0.5
    warmup: Annotated[bool, Field(description="Run each model once before it reports ready.")] = (
        True
    )
    warmup_max_batch: Annotated[
        int, Field(ge=1, description="Warm-up runs batch 1 and at most this batch.")
    ] = 64
    max_model_bytes: Annotated[
        int, Field(ge=1, description="Refuse model files (with external data) larger than this.")
    ] = 2 << 30
    model_memory_limit: Annotated[
        int,
        Field(
            ge=0,
            description="Bytes one version may take to load and warm up, proven first by a "
            "trial load in a child process held to it; over it the version is unavailable "
            "(0: no trial load).",
        ),
    ] = 4 << 30
    load_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            description="Longest time one version may take to load and warm up; past it the "
            "version is unavailable (the port opens at once, models load behind it).",
        ),
    ] = 300.0

    # --- the repository
    poll_s: Annotated[
        float,
        Field(
            ge=0,
            description="Watch the repository every this many seconds and load new, changed "
            "or removed versions atomically (0: only on an explicit load).",
        ),
    ] = 0.0
    model_control_mode: Annotated[
        Literal["auto", "none", "poll", "explicit"],
        Field(
            description="Triton's model control: none (every model at start, load and unload "
            "refused), poll (none, and the repository watched every --poll seconds, 15 when "
            "0), explicit (only --load-model models at start; load and unload by request); "
            "auto: every model at start, load and unload by request, watched when --poll > 0.",
        ),
    ] = "auto"
    load_model: Annotated[
        list[str],
        NoDecode,
        Field(
            description="With --model-control-mode explicit: a model to load at start "
            "(repeatable; * alone: every model). Environment: a JSON list.",
        ),
    ] = []
    strict_readiness: Annotated[
        bool,
        Field(
            description="/v2/health/ready is 503 while any model that should serve is not "
            "ready, an empty repository included (Triton's --strict-readiness).",
        ),
    ] = True
    fold_on_load: Annotated[
        bool,
        Field(
            description="Fold the BNs of each model in memory when it loads and serve the "
            "folded graph if parity holds (config.json fold_on_load overrides per model).",
        ),
    ] = False
    fold_rtol: Annotated[
        float, Field(ge=0, description="Parity tolerance of fold on load (relative error).")
    ] = DEFAULT_RTOL
    shadow_parity: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="Share of inference requests also run through their version's "
            "reference off the request's path (a bounded queue, one low-priority thread) and "
            "compared at its gate: live agreement and error in /metrics and /parity (0: off).",
        ),
    ] = 0.01
    default_max_batch_size: Annotated[
        int,
        Field(
            ge=0,
            description="max_batch_size of a model without a configuration whose graph has "
            "a dynamic first dimension (0: no batching).",
        ),
    ] = DEFAULT_MAX_BATCH_SIZE

    # --- batching defaults, for models whose config.json leaves them out
    batching: Annotated[
        bool, Field(description="Dynamic batching unless config.json disables it.")
    ] = True
    max_queue_delay_ms: Annotated[
        float,
        Field(ge=0, le=60_000, description="Longest wait for a batch to fill (config.json wins)."),
    ] = 1.0
    eager_batching: Annotated[
        bool,
        Field(
            description="A batch never waits: an idle runner takes a request at once, a "
            "busy one takes everything queued when it frees; false: wait out "
            "max_queue_delay_ms (config.json dynamic_batching.eager)."
        ),
    ] = True
    inline_below_ms: Annotated[
        float,
        Field(
            ge=0,
            description="An eager model whose lone request computes in less than this "
            "runs it on the event loop when idle (no thread switch); 0: never.",
        ),
    ] = 3.0
    max_queue_size: Annotated[
        int, Field(ge=1, description="Requests one model queues before 503 (config.json wins).")
    ] = 1024
    test_delay_scheduler: Annotated[
        int,
        Field(
            ge=0,
            description="Test hook (Triton's TRITONSERVER_DELAY_SCHEDULER): each model's "
            "batcher forms no batch until this many requests are queued, once; 0: off.",
        ),
    ] = 0
    request_timeout_s: Annotated[
        float, Field(gt=0, description="Longest wait for one inference.")
    ] = 30.0
    retry_after_s: Annotated[
        int, Field(ge=0, description="Retry-After sent with 503 responses.")
    ] = 1

    # --- input policy
    max_body_bytes: Annotated[
        int,
        Field(ge=1024, description="Larger bodies get 400 (Triton's --http-max-input-size)."),
    ] = 64 << 20
    allow_nonfinite: Annotated[bool, Field(description="Accept NaN/Inf in float inputs.")] = False
    max_image_pixels: Annotated[int, Field(ge=1, description="Larger uploads get 413.")] = (
        32_000_000
    )
    max_image_bytes: Annotated[
        int,
        Field(ge=1, description="Largest decoded image as float32 RGBA (16 bytes a pixel); 413."),
    ] = 256 << 20
    max_parity_samples: Annotated[int, Field(ge=1, description="Cap on POST /parity samples.")] = (
        4096
    )

    # --- security and operations
    api_token: Annotated[
        SecretStr | None,
        Field(description="Bearer token for /v2/repository/*; unset leaves them open."),
    ] = None
    http_restricted_api: Annotated[
        list[str],
        NoDecode,
        Field(
            description="Triton's restricted APIs: CATEGORY[,CATEGORY...]:KEY=VALUE; requests "
            "of those categories need header KEY: VALUE, else 403 (repeatable; categories: "
            "health, metadata, inference, shared-memory, model-config, model-repository, "
            "statistics, trace, logging). Environment: a JSON list.",
        ),
    ] = []
    grpc_restricted_protocol: Annotated[
        list[str],
        NoDecode,
        Field(
            description="The same for gRPC (Triton's --grpc-restricted-protocol): those RPCs "
            "need metadata triton-grpc-protocol-KEY: VALUE, else UNAVAILABLE.",
        ),
    ] = []
    allow_client_shm: Annotated[
        bool,
        Field(
            description="Clients may register system shared memory regions and name them in "
            "requests (Triton's --allow-client-shm; off: register and unregister refused).",
        ),
    ] = True
    log_level: Annotated[
        Literal["critical", "error", "warning", "info", "debug"],
        Field(description="critical, error, warning, info or debug."),
    ] = "info"
    log_format: Annotated[
        Literal["text", "json", "default", "ISO8601"],
        Field(
            description="text; json: one JSON object per line (uvicorn's lines too) with "
            "timestamp, level, logger, message, request id, trace id, model and version; "
            "default or ISO8601: Triton's line layouts (Triton's --log-format), uvicorn's "
            "lines too.",
        ),
    ] = "text"
    log_escape: Annotated[
        bool,
        Field(
            validation_alias=AliasChoices("BNFOLD_LOG_ESCAPE", "TRITON_SERVER_ESCAPE_LOG_MESSAGES"),
            description="In Triton's line layouts, each message as a JSON string (quoted, "
            "newlines and control characters escaped); Triton's "
            "TRITON_SERVER_ESCAPE_LOG_MESSAGES is read too (this one wins).",
        ),
    ] = True
    log_file: Annotated[
        Path | None,
        Field(
            description="Append the log lines to this file instead of stderr (Triton's "
            "--log-file; set at start only: the logging extension refuses to change it).",
        ),
    ] = None
    access_log: Annotated[
        bool,
        Field(
            description="One log line per request, with its id (off by default: a line "
            "per request costs the hot path; errors are logged either way).",
        ),
    ] = False
    otlp_endpoint: Annotated[
        str | None,
        Field(
            # OpenTelemetry's own variable works too (BNFOLD_OTLP_ENDPOINT wins).
            validation_alias=AliasChoices("BNFOLD_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
            description="OTLP/HTTP collector (http://host:4318; /v1/traces is added): each "
            "inference is traced (request, queue, compute spans); unset: no tracing.",
        ),
    ] = None
    trace_rate: Annotated[
        int,
        Field(
            ge=1,
            description="Trace one inference in this many (Triton's trace_rate; "
            "POST /v2/trace/setting changes it while serving).",
        ),
    ] = 1
    trace_config: Annotated[
        list[str],
        NoDecode,
        Field(
            description="Triton's --trace-config (repeatable): triton,file=PATH chooses Triton's "
            "trace mode (JSON trace records written to PATH; triton,log-frequency=N: every N "
            "traces to PATH.0, PATH.1...); level=OFF|TIMESTAMPS|TENSORS, rate=N, count=N, "
            "mode=triton|opentelemetry. Environment: a JSON list.",
        ),
    ] = []
    # --- Triton's metrics (service/triton_metrics.py)
    allow_metrics: Annotated[
        bool,
        Field(
            description="Triton's metrics families (nv_*) on the metrics port and on /metrics "
            "(Triton's --allow-metrics); off: neither, and no metrics port (bnfold_* stay).",
        ),
    ] = True
    allow_cpu_metrics: Annotated[
        bool,
        Field(description="Triton's CPU families nv_cpu_* (Triton's --allow-cpu-metrics)."),
    ] = True
    metrics_port: Annotated[
        int,
        Field(
            ge=0,
            le=65535,
            description="Port of Triton's metrics endpoint, GET /metrics with Triton's "
            "families only (Triton's --metrics-port; 0: no port of its own).",
        ),
    ] = 8002
    metrics_address: Annotated[
        str | None,
        Field(
            description="Interface of the metrics port (Triton's --metrics-address; unset: "
            "the --host address, as Triton uses its HTTP address).",
        ),
    ] = None
    metrics_interval_ms: Annotated[
        int,
        Field(
            ge=1,
            description="Sample the per-interval families (nv_cpu_*) every this many "
            "milliseconds (Triton's --metrics-interval-ms).",
        ),
    ] = 2000
    metrics_config: Annotated[
        list[str],
        NoDecode,
        Field(
            description="Triton's --metrics-config SETTING=VALUE (repeatable): "
            "counter_latencies=false, summary_latencies=true, histogram_latencies=true, "
            "summary_quantiles=Q:ERR,... Environment: a JSON list.",
        ),
    ] = []

    # --- connections (HTTP, then gRPC)
    max_connections: Annotated[
        int,
        Field(
            ge=0,
            description="Open HTTP connections per process; past it the oldest one still "
            "sending its request (or idle) is closed (0: the descriptor limit less 128).",
        ),
    ] = 0
    header_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            description="Longest time a client may take to send a request's head and body; "
            "then its connection is closed.",
        ),
    ] = 30.0
    keep_alive_s: Annotated[
        float, Field(gt=0, description="An idle keep-alive connection is closed after this.")
    ] = 5.0

    grpc_max_concurrent_rpcs: Annotated[
        int,
        Field(
            ge=0,
            description="gRPC calls in flight per process, an open stream counting as one; "
            "past it a new call gets RESOURCE_EXHAUSTED (0: no limit).",
        ),
    ] = 4096
    grpc_max_streams_per_connection: Annotated[
        int,
        Field(
            ge=1,
            description="Calls one gRPC connection may have open at once (HTTP/2's "
            "SETTINGS_MAX_CONCURRENT_STREAMS); more wait in the client.",
        ),
    ] = 1024
    grpc_handshake_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            description="Longest time a new gRPC connection may take to complete its HTTP/2 "
            "handshake; then it is closed.",
        ),
    ] = 30.0
    grpc_max_connection_idle_s: Annotated[
        float,
        Field(
            ge=0,
            description="A gRPC connection with no call for this long is closed with GOAWAY "
            "(clients reconnect on their next call); 0: never.",
        ),
    ] = 300.0
    grpc_keepalive_s: Annotated[
        float,
        Field(
            gt=0,
            description="Ping a gRPC connection with calls in flight this often; one that "
            "does not answer within 20 s is closed (a dead client holding streams).",
        ),
    ] = 60.0
    grpc_min_ping_interval_s: Annotated[
        float,
        Field(
            gt=0,
            description="A gRPC client pinging more often than this without calls is closed "
            "with GOAWAY (too_many_pings) at the third such ping (Triton's default).",
        ),
    ] = 300.0

    drain_s: Annotated[
        float, Field(ge=0, description="After SIGTERM, seconds reporting not-ready before closing.")
    ] = 1.0
    shutdown_timeout_s: Annotated[
        float, Field(gt=0, description="Wait for in-flight requests.")
    ] = 30.0

    @field_validator("api_token", "otlp_endpoint", "log_file", "metrics_address", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "load_model",
        "http_restricted_api",
        "grpc_restricted_protocol",
        "trace_config",
        "metrics_config",
        mode="before",
    )
    @classmethod
    def _list_from_env(cls, value: object) -> object:
        """A list as given, or from the environment: a JSON list, or one value."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [value] if value else []
        return value

    @field_validator("http_restricted_api", "grpc_restricted_protocol")
    @classmethod
    def _restriction_groups(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """Groups Triton's command line parser accepts (refused in its words)."""
        from .restricted import parse  # the categories and the group syntax

        kind = "api" if info.field_name == "http_restricted_api" else "protocol"
        parse(value, str(info.field_name).replace("_", "-"), kind)
        return value

    @field_validator("metrics_config")
    @classmethod
    def _metrics_config(cls, value: list[str]) -> list[str]:
        """``<setting>=<value>`` as Triton's command line parser takes it."""
        from .triton_metrics import check_setting

        for option in value:
            check_setting(option)
        return value

    @model_validator(mode="after")
    def _trace_config(self) -> Settings:
        """``--trace-config`` as Triton spells it; Triton's trace file has
        one writer."""
        from .tracing import TRITON, check_start, parse_trace_config

        config = parse_trace_config(self.trace_config)
        check_start(config, self.otlp_endpoint is not None)
        if config.mode == TRITON and self.workers > 1:
            raise ValueError("--trace-config triton,file=PATH needs --workers 1 (one trace file)")
        return self

    @model_validator(mode="after")
    def _model_control(self) -> Settings:
        """``--load-model`` as Triton's command line parser takes it, refused in its words."""
        if self.load_model and self.model_control_mode != "explicit":
            raise ValueError(
                "Use of '--load-model' requires setting '--model-control-mode=explicit' as well."
            )
        if "*" in self.load_model and len(self.load_model) > 1:
            raise ValueError(
                "Wildcard model name '*' must be the ONLY startup model if specified at all."
            )
        return self


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` (for worker processes)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, list):
            value = json.dumps(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return env
