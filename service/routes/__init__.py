"""HTTP routes, one module per concept; ``ROUTERS`` is what the app mounts."""

from __future__ import annotations

from . import images, infer, logs, models, parity, repository, server, shm, trace, web

# Inference first: routes are matched in order, and it is the hot path.
ROUTERS = (
    infer.router,
    server.router,
    models.router,
    repository.router,
    parity.router,
    images.router,
    shm.router,
    trace.router,
    logs.router,
    web.router,  # the page at /, its assets, /docs and /redoc
)
