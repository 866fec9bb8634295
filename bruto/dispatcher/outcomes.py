"""What a processor answered, as plain values: the words the dispatcher's
shell and its state machine (bruto.dispatcher.outbox) speak to each other."""

from __future__ import annotations

import dataclasses
import enum


class Outcome(enum.Enum):
    STORED = "stored"        # 200: the processor stored it now
    DUPLICATE = "duplicate"  # 422: the processor already had this correlationId
    FAILED = "failed"        # 500 (configured failure), 429 (limiter), no connection: surely not stored
    REJECTED = "rejected"    # another 4XX: the processor will never take this payment
    UNKNOWN = "unknown"      # timeout, dropped connection, other 5XX: it may or may not be stored


@dataclasses.dataclass(frozen=True)
class Stored:
    """A payment as the processor stored it (GET /payments/{id})."""

    requested_at: int
    amount_cents: int


@dataclasses.dataclass(frozen=True)
class Health:
    failing: bool
    min_response_ms: int


@dataclasses.dataclass(frozen=True)
class RateLimited:
    retry_after_s: float
