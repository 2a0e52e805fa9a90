"""Just enough HTTP/1.1 for the fakes: read one request, write a head, a plain body or chunks."""

from __future__ import annotations

import asyncio
import http
import time


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        pieces = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            pieces.append(await reader.readexactly(size))
            await reader.readexactly(2)
            if size == 0:
                break
        body = b"".join(pieces)
    else:
        body = b""
    return method, target, headers, body


def status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Site Overloaded" if status == 529 else "Error"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


async def write_head(writer: asyncio.StreamWriter, status: int, headers: dict[str, str]) -> None:
    lines = [status_line(status)]
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    for name, value in {"date": date, **headers, "connection": "keep-alive"}.items():
        lines.append(f"{name}: {value}\r\n".encode())
    writer.write(b"".join(lines) + b"\r\n")
    await writer.drain()


async def write_plain(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes) -> None:
    await write_head(writer, status, {**headers, "content-length": str(len(body))})
    writer.write(body)
    await writer.drain()


async def write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()
