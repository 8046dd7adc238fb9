"""The load test's lean HTTP client reads bodies by Content-Length and keeps connections."""

from __future__ import annotations

import asyncio

from bench.http_client import Connection

RESPONSES = [
    b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\nETag: "abc"\r\n\r\nhello',
    b'HTTP/1.1 304 Not Modified\r\netag: "abc"\r\n\r\n',
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
]


def test_get_reads_status_headers_and_body_over_one_connection() -> None:
    requests: list[bytes] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while len(requests) < len(RESPONSES):
            try:
                requests.append(await reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError:
                break
            writer.write(RESPONSES[len(requests) - 1])
            await writer.drain()
        writer.close()

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = Connection(f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"})
        answers = [await connection.get("/a", {}), await connection.get("/a", {"X": "1"})]
        answers.append(await connection.get("/b", {}))
        connection.close()
        server.close()
        return answers

    answers = asyncio.run(run())
    assert answers[0] == (200, {"content-length": "5", "etag": '"abc"'}, b"hello")
    assert answers[1][0] == 304 and answers[1][2] == b""
    assert answers[2][2] == b"ok" and connections == 1
    assert requests[1].startswith(b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Authorization: Bearer t\r\n" in requests[1] and b"X: 1\r\n" in requests[1]
