"""Runtime settings, read once from the environment.

Every setting is declared once, here: its environment variable, its default and
why the default is what it is. The gateway (gunicorn workers), the dispatcher
and the tools all build their `Settings` from the same environment, so two
processes started side by side agree on the shared directory and the sizes of
its regions.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Settings:
    # Where the shared-memory regions live (one file each). tmpfs by default:
    # payments survive any process crash, not a reboot.
    shm_dir: str = "/dev/shm/bruto"

    # The two payment processors. Defaults are the local emulators' ports.
    default_url: str = "http://127.0.0.1:8001"
    fallback_url: str = "http://127.0.0.1:8002"

    # Intake: one slab per web worker. Slots are shared by every gunicorn
    # instance that uses the same shm_dir, so this must cover instances x workers.
    intake_slots: int = 8
    # Records per slab. At 550 payments/s split over >= 2 workers, 65,536
    # records hold minutes of backlog even if the dispatcher stalls.
    intake_capacity: int = 65536

    # Confirmed payments kept for summaries. The official test stores about
    # 17,000; a million covers hours of that load at 40 bytes a record.
    ledger_capacity: int = 1 << 20

    # Payments the dispatcher holds between intake and confirmation (queued,
    # in flight, waiting for a retry). The worst official stage leaves about
    # 20 s x 550/s = 11,000 waiting for default to recover.
    outbox_capacity: int = 1 << 16

    # Most payments in flight to processors at once; the dispatcher sizes the
    # actual number by Little's law (bruto.routing) and never goes above this.
    senders: int = 128

    # Seconds default may stay down before payments go to fallback and pay its
    # higher fee (the profit model is in bruto/routing.py).
    default_patience_s: float = 30.0

    @classmethod
    def from_env(cls, environ: os._Environ | dict | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            raw = env.get("BRUTO_" + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = {"int": int, "float": float}.get(field.type, str)(raw)
        return cls(**values)
