"""The load test's HTTP client: one keep-alive HTTP/1.1 connection on asyncio streams."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class Connection:
    """One keep-alive HTTP/1.1 connection, with just the parsing these responses need.

    The load used to come from httpx, which spends 3-5 ms of CPU per request, three
    times what either server does, so the benchmark measured its own client.
    """

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        url = urlsplit(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        fixed = {"Host": f"{self.host}:{self.port}", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Send one GET; return the status, the lower-cased headers and the body."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {path} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1"))
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)
        }
        if "transfer-encoding" in fields:
            raise ValueError("chunked responses are not expected here")
        length = 0 if status in (204, 304) else int(fields.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, fields, body

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
