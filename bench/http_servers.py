"""The HTTP load test's servers: `mta serve` and the static-file anchor, on loopback.

Each starts as a subprocess on a free port of 127.0.0.1 and is waited for (bounded).
The anchor serves the same archive bytes as files through a bare FastAPI
``StaticFiles`` app under uvicorn, the stack `mta serve` runs on, without auth or
registry: what this machine does with the bytes alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # never anything else: this is a loopback benchmark
READ_TOKEN = "bench-read-token-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_healthy(process: Any, url: str, what: str) -> None:
    """Poll ``url`` until it answers (bounded: 60 s), or raise if the process died."""
    import httpx

    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"{what} did not answer within 60 s")


def start_server(where: dict[str, str], root: Path, memory_cache_mb: int) -> tuple[Any, str]:
    """Start `mta serve` in a subprocess and wait (bounded) until it answers."""
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({"read": [READ_TOKEN], "admin": [ADMIN_TOKEN]}))
    port = _free_port()
    argv = [
        sys.executable, "-m", "mta.cli.app",
        "--db", where["db"], "--store", where["store"], "--cache-dir", where["cache"],
        "serve", "--host", HOST, "--port", str(port),
        "--tokens-file", str(tokens), "--memory-cache-mb", str(memory_cache_mb),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MTA_READ_TOKEN", "MTA_ADMIN_TOKEN")}
    process = subprocess.Popen(argv, env=env)
    base = f"http://{HOST}:{port}"
    _wait_healthy(process, f"{base}/healthz", "mta serve")
    return process, base


def start_static_server(folder: Path) -> tuple[Any, str]:
    """Serve ``folder`` with `serve_static` in a subprocess; wait until it answers."""
    port = _free_port()
    argv = [sys.executable, "-m", "bench.http_servers", str(folder)]
    process = subprocess.Popen([*argv, str(port)])
    base = f"http://{HOST}:{port}"
    _wait_healthy(process, f"{base}/", "the static server")
    return process, base


def serve_static(folder: Path, port: int) -> None:
    """The anchor: ``folder`` as static files, by uvicorn + FastAPI as `mta serve` runs them."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    app = FastAPI()
    app.mount("/", StaticFiles(directory=folder))
    uvicorn.run(app, host=HOST, port=port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    # `python -m bench.http_servers FOLDER PORT`: the anchor, as start_static_server runs it.
    serve_static(Path(sys.argv[1]), int(sys.argv[2]))
