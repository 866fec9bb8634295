"""Instructions per payment through the outbox state machine, in one process: accepted, drained, sent, stored.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=starmap_next --callgrind-out-file=/dev/null \
        .venv/bin/python tools/callgrind_outbox.py [COUNT]

Runs COUNT (default 2000) payments, a fresh correlationId each, through
bruto.dispatcher.outbox over in-memory regions: appended to intake as a web
worker does, then ``drain``, ``poll`` (the Send) and ``attempt_done`` with a
200, the events the dispatcher's loop feeds it for a payment (no HTTP: the
shell's and the client's share is tools/bench_dispatcher.py's). 200 payments
warm the caches first. As in tools/callgrind_post.py, the measured payments
run inside ``itertools.starmap``, so ``--toggle-collect=starmap_next`` counts
them alone; callgrind's "Collected" over COUNT is the figure.
"""

from __future__ import annotations

import sys
import uuid
from collections import deque
from itertools import starmap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bruto.dispatcher import routing  # noqa: E402
from bruto.dispatcher.outbox import Outbox  # noqa: E402
from bruto.dispatcher.outbox import Send  # noqa: E402
from bruto.dispatcher.outcomes import Health  # noqa: E402
from bruto.dispatcher.outcomes import Outcome  # noqa: E402
from bruto.shm.intake import IntakeWriter  # noqa: E402
from bruto.shm.layout import DispatcherRegions  # noqa: E402

S = 1_000_000
ANSWER_US = 1_000


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    regions = DispatcherRegions.in_memory(1, 64, 64, 4096)
    writer = IntakeWriter.over(0, regions)
    outbox = Outbox(regions, routing.Policy(patience_us=30 * S))
    clock = [1_700_000_000 * S]
    outbox.recover(clock[0])
    for processor in (0, 1):
        outbox.health_reported(processor, Health(False, 0), clock[0], clock[0])

    def pay(correlation_id: bytes) -> None:
        clock[0] += 2 * ANSWER_US
        now = clock[0]
        writer.append(correlation_id, 1990, now)
        outbox.drain(now)
        (send,) = outbox.poll(now)
        assert isinstance(send, Send)
        outbox.attempt_done(send, Outcome.STORED, now + ANSWER_US, ANSWER_US)

    warm = 200
    for _ in range(warm):
        pay(uuid.uuid4().bytes)
    measured = [(uuid.uuid4().bytes,) for _ in range(count)]
    totals = regions.dispatch.counters  # read as the inspector does: works on any commit, before and after
    stored = int(totals["stored"])
    deque(starmap(pay, measured), maxlen=0)
    assert int(totals["stored"]) == stored + count


if __name__ == "__main__":
    main()
