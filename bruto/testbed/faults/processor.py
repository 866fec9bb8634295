"""A misbehaving payment processor: a proxy in front of a processor (an emulator) that fails on demand.

    bruto-faulty --port 8101 --upstream http://127.0.0.1:8001 --control-port 8201
    curl -XPUT localhost:8201/mode/hang     # and back: curl -XPUT localhost:8201/mode/pass

Every request but the admin API's (``/admin/...``, which the tests use to
count what the processor stored, so it always passes) gets the current mode:

| mode    | what the client sees                                   | stored upstream?      |
| ------- | ------------------------------------------------------ | --------------------- |
| pass    | the processor's answer                                 | as the processor says |
| hang    | the request is read, then nothing, ever                | no                    |
| close   | the answer's head and half its body, then a close      | yes (forwarded first) |
| garbage | bytes that are not HTTP, then close                    | yes (forwarded first) |
| late    | the processor's answer, ``--late-s`` seconds late      | yes (forwarded first) |
| down    | connection refused (and open connections are cut)      | no                    |

So ``close``, ``garbage`` and ``late`` leave a payment stored whose client
could not learn it was: the outcome bruto must resolve without storing it
twice. The mode applies to payments, lookups and service-health alike.
``GET /mode`` on the control port says the current mode and how many
requests each mode met.

One asyncio loop: requests are read with a minimal HTTP/1.1 parser
(Content-Length bodies, keep-alive), forwarded over one aiohttp session.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal

from aiohttp import ClientSession
from aiohttp import ClientTimeout
from aiohttp import web

MODES = ("pass", "hang", "close", "garbage", "late", "down")
_GARBAGE = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not HTTP at all \xff\xfe\x00\r\n\r\n"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultyProcessor:
    """The proxy's state: its mode, its listener, the connections it holds.

    Args:
        host: Where clients connect.
        port: Their port.
        upstream: The real processor's base URL.
        late_s: How late ``late`` answers.
    """

    def __init__(self, host: str, port: int, upstream: str, late_s: float):
        self.host, self.port = host, port
        self.upstream = upstream.rstrip("/")
        self.late_s = late_s
        self.mode = "pass"
        self.met: collections.Counter[str] = collections.Counter()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.session: ClientSession | None = None

    async def start(self) -> None:
        self.session = ClientSession(timeout=ClientTimeout(total=None))
        await self.listen()

    async def listen(self) -> None:
        self.server = await asyncio.start_server(self.serve, self.host, self.port, reuse_address=True, backlog=4096)

    async def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        if mode == "down" and self.server is not None:
            self.server.close()
            self.server = None
            for writer in list(self.writers):
                writer.transport.abort()  # a reset, as a host that vanished would give
        elif mode != "down" and self.server is None:
            await self.listen()
        self.mode = mode

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                mode = "pass" if target.startswith("/admin/") else self.mode
                self.met[mode] += 1
                if mode == "hang":
                    try:
                        await asyncio.Event().wait()  # never set: held until the proxy stops
                    except asyncio.CancelledError:
                        return
                if mode == "down":
                    return
                status, reason, answer_headers, answer = await self.forward(method, target, headers, body)
                raw = render(status, reason, answer_headers, answer)
                if mode == "close":
                    # The whole head and half the body: the client knows the answer is cut.
                    writer.write(raw[:len(raw) - len(answer) + len(answer) // 2])
                    await writer.drain()
                    return
                if mode == "garbage":
                    writer.write(_GARBAGE)
                    await writer.drain()
                    return
                if mode == "late":
                    await asyncio.sleep(self.late_s)
                writer.write(raw)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        sent = {name: value for name, value in headers if name.lower() not in _HOP_BY_HOP}
        assert self.session is not None, "forward() before start()"
        async with self.session.request(method, self.upstream + target, headers=sent, data=body) as response:
            answer = await response.read()
            kept = [(name, value) for name, value in response.headers.items() if name.lower() not in _HOP_BY_HOP]
            return response.status, response.reason or "", kept, answer


async def read_request(reader: asyncio.StreamReader):
    """One request: (method, target, headers, body), or None at the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if line]
    length = next((int(value) for name, value in headers if name.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return method, target, headers, body


def render(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def control_app(proxy: FaultyProcessor) -> web.Application:
    async def put_mode(request: web.Request) -> web.Response:
        try:
            await proxy.set_mode(request.match_info["mode"])
        except ValueError:
            return web.json_response({"error": f"modes: {', '.join(MODES)}"}, status=400)
        return web.json_response({"mode": proxy.mode})

    async def get_mode(request: web.Request) -> web.Response:
        return web.json_response({"mode": proxy.mode, "met": dict(proxy.met)})

    app = web.Application()
    app.router.add_put("/mode/{mode}", put_mode)
    app.router.add_get("/mode", get_mode)
    return app


async def serve(args: argparse.Namespace) -> None:
    proxy = FaultyProcessor(args.host, args.port, args.upstream, args.late_s)
    await proxy.start()
    runner = web.AppRunner(control_app(proxy), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.control_port).start()
    print(f"bruto-faulty on http://{args.host}:{args.port} for {args.upstream}; "
          f"control on http://{args.host}:{args.control_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    if proxy.session is not None:
        await proxy.session.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bruto-faulty", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="where bruto reaches this processor")
    parser.add_argument("--upstream", required=True, help="the processor it stands in front of")
    parser.add_argument("--control-port", type=int, required=True, help="PUT /mode/NAME here")
    parser.add_argument("--late-s", type=float, default=9.0,
                        help="how late 'late' answers, in seconds (default %(default)s: past bruto's 7 s floor)")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
