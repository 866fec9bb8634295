"""Instructions per POST /payments on the hot path, in one process: bytes in, protocol, Falcon, bytes out.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=starmap_next --callgrind-out-file=/dev/null \
        .venv/bin/python tools/callgrind_post.py [COUNT]

Runs COUNT (default 2000) POST /payments, a fresh correlationId each and the
head k6 sends, through bruto.gateway.http1 and the worker's ``Server.answer``
into the real app on a fresh shared directory in /dev/shm (no socket, no
dispatcher), after 200 of the same to warm the caches. The measured requests
run inside ``itertools.starmap``, which nothing else on the path calls, so
``--toggle-collect=starmap_next`` counts them alone (the interpreter's start
and the imports vary by tens of millions of instructions from run to run);
callgrind's "Collected" over COUNT is the figure. Instruction counts do not
depend on what else runs on the machine (docs/BENCHMARKS.md has the figures).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import deque
from itertools import starmap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bruto.config import Settings  # noqa: E402
from bruto.gateway.app import create_app  # noqa: E402
from bruto.gateway.http1 import Connection  # noqa: E402
from bruto.gateway.http1 import HttpDate  # noqa: E402
from bruto.gateway.worker import Server  # noqa: E402
from bruto.shm.layout import create_all  # noqa: E402

REQUEST = (b"POST /payments HTTP/1.1\r\nHost: localhost:9999\r\nUser-Agent: k6/1.1.0 (https://k6.io/)\r\n"
           b"Content-Length: 71\r\nContent-Type: application/json\r\n\r\n"
           b'{"correlationId":"%08x-0000-4000-8000-%012x","amount":19.90}')
# The environ of a TCP client connection, as the worker makes it.
ENVIRON = {"wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
           "wsgi.multiprocess": False, "wsgi.run_once": False, "SCRIPT_NAME": "", "SERVER_SOFTWARE": "bruto",
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "9999", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    settings = Settings(shm_dir=tempfile.mkdtemp(dir="/dev/shm", prefix="bruto-callgrind-"), intake_slots=1)
    try:
        create_all(settings)
        server = Server(create_app(settings))
        protocol = Connection(dict(ENVIRON), server.limits, HttpDate().now)

        def post(data: bytes) -> None:
            out = server.answer(protocol, protocol.receive(data))
            assert out.startswith(b"HTTP/1.1 202") and not protocol.must_close, out

        warm = 200
        for n in range(warm):
            post(REQUEST % (n, n))
        measured = [(REQUEST % (n, n),) for n in range(warm, warm + count)]
        deque(starmap(post, measured), maxlen=0)
    finally:
        shutil.rmtree(settings.shm_dir)


if __name__ == "__main__":
    main()
