"""How `mta serve` listens: uvicorn, with the protocol bounds the app's own checks rely on.

The app answers every bound itself with the JSON error body (`HeaderLimitMiddleware` 431,
`BodyLimitMiddleware` 413). uvicorn's h11 parser keeps a request head in a buffer of 16 KiB
by default and refuses a longer one with a plain-text 400, closing the socket while the
client is still sending: the client sees a connection reset. The buffer is therefore set
far above the app's header bound, so heads up to PROTOCOL_HEAD_BYTES reach the app and get
its 431. (httptools, when installed and picked by uvicorn, has no such buffer bound.)
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

PROTOCOL_HEAD_BYTES = 1024**2  # request line + headers uvicorn buffers before the app sees them
GRACEFUL_SHUTDOWN_SECONDS = 5


def uvicorn_config(app: FastAPI, *, host: str, port: int, log_level: str) -> uvicorn.Config:
    """The uvicorn configuration `mta serve` runs `app` with.

    Args:
        app: the app of `create_app`.
        host: address to listen on.
        port: port to listen on.
        log_level: uvicorn's log level.

    Returns:
        The configuration, for `serve` or a test's own `uvicorn.Server`.
    """
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        h11_max_incomplete_event_size=PROTOCOL_HEAD_BYTES,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def serve(app: FastAPI, *, host: str, port: int, log_level: str) -> None:
    """Serve `app` until interrupted; exit 3 when it cannot start (as `uvicorn.run` does)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
