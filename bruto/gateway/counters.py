"""A web worker's counters: its answers, in its own intake slab.

The worker that holds an intake slot is the only writer of that slab, its
counters included (bruto.shm.layout.INTAKE: ``responses`` by route and status,
``rejections`` by reason, ``protocol_errors`` by status). A payment accepted
costs nothing here: it is one record ``written``, which the readers count as
a 202. Everything else is an error path or a rare route, where a dict lookup
is fine; each count is one integer increment through a ``memoryview`` (see
bruto.dispatcher.metrics for why that and not numpy indexing).
"""

from __future__ import annotations

from bruto.gateway.validation import REFUSALS
from bruto.gateway.validation import InvalidPayment
from bruto.shm.layout import OTHER_ROUTE
from bruto.shm.layout import OTHER_STATUS
from bruto.shm.layout import PAYMENT_ROUTE
from bruto.shm.layout import PROTOCOL_ERRORS
from bruto.shm.layout import REJECTIONS
from bruto.shm.layout import ROUTE_OF_PATH
from bruto.shm.layout import STATUSES
from bruto.shm.region import Region

STATUS_COLUMN = {status: column for column, status in enumerate(STATUSES)}
REASON_INDEX = {reason: index for index, (reason, _) in enumerate(REJECTIONS)}
# Validation's reasons are rows of the shared vocabulary, with the same status.
if any(dict(REJECTIONS).get(reason) != status for reason, (status, _) in REFUSALS.items()):
    raise ImportError("bruto.gateway.counters: validation's REFUSALS and bruto.shm.layout.REJECTIONS disagree")
INTAKE_FULL = REASON_INDEX["intake_full"]
OVERLOADED = REASON_INDEX["overloaded"]

# The counters of this process's slab, for the worker class's own answers
# (bruto.gateway.worker), which never reach the app: set by create_app.
_process_counters: GatewayCounters | None = None


class GatewayCounters:
    """Increments on one intake slab's counters.

    Args:
        slab: the slab this worker holds (``IntakeWriter.slab``).
    """

    def __init__(self, slab: Region):
        row = slab.counters_array[0]
        self._responses = memoryview(row["responses"])
        self._rejections = memoryview(row["rejections"])
        self._protocol_errors = memoryview(row["protocol_errors"])

    def response(self, path: str, status: int) -> None:
        """An answer of the app (POST /payments' 202s and refusals aside: see the module)."""
        route = ROUTE_OF_PATH.get(path)
        if route is None:
            route = PAYMENT_ROUTE if path.startswith("/payments/") and path.count("/") == 2 else OTHER_ROUTE
        self._responses[route, STATUS_COLUMN.get(status, OTHER_STATUS)] += 1

    def rejection(self, error: InvalidPayment) -> None:
        """A payment refused by validation, counted by its reason."""
        self._rejections[REASON_INDEX[error.reason]] += 1

    def intake_full(self) -> None:
        self._rejections[INTAKE_FULL] += 1

    def overloaded(self) -> None:
        self._rejections[OVERLOADED] += 1

    def protocol_error(self, status: int) -> None:
        """An answer of the worker itself (malformed HTTP, a limit, a failed app)."""
        if status in PROTOCOL_ERRORS:
            self._protocol_errors[PROTOCOL_ERRORS.index(status)] += 1

    def claim_process(self) -> None:
        """Make these the counters :func:`note_protocol_error` writes to, in this process."""
        global _process_counters
        _process_counters = self


def note_protocol_error(status: int) -> None:
    """Count an answer the worker gave without the app (no-op before the app exists)."""
    if _process_counters is not None:
        _process_counters.protocol_error(status)
