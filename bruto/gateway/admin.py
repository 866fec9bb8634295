"""Who may call POST /purge-payments: ``BRUTO_PURGE_ACCESS`` and ``BRUTO_PURGE_TOKEN``.

A purge empties bruto's records (intake, outbox, ledger), so on a gateway
that anyone can reach it is the one request that can undo everyone else's.
The challenge's test calls it in its setup without credentials, so access is
open by default (bruto.config says why); a deployment that is not the
challenge's sets a token, or turns the route off:

| access  | request                                   | answer                         |
| ------- | ----------------------------------------- | ------------------------------ |
| open    | any                                       | the purge (200, 202 or 503)    |
| token   | ``X-Bruto-Token`` equal to the token      | the purge (200, 202 or 503)    |
| token   | header missing or different               | 401, nothing purged            |
| off     | any                                       | 403, nothing purged            |

The token is compared in constant time (``hmac.compare_digest``) on bytes, so
neither the time an answer takes nor a header that is not ASCII tells an
attacker anything about it; it appears in no answer, no log and no metric.
"""

from __future__ import annotations

import hmac

import falcon

from bruto.config import Settings
from bruto.gateway.counters import GatewayCounters
from bruto.gateway.errors import set_error

TOKEN_HEADER = "X-Bruto-Token"


class GuardedPurge:
    """POST /purge-payments behind the configured access; the purge itself is ``purge``'s.

    Args:
        purge: The resource that carries a purge out (bruto.gateway.app.Purge).
        settings: ``purge_access`` and ``purge_token``.
        counters: This worker's counters (refusals are counted by status).
    """

    def __init__(self, purge, settings: Settings, counters: GatewayCounters):
        self._purge = purge
        self._access = settings.purge_access
        self._token = settings.purge_token.encode()
        self._counters = counters

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._access == "open":
            self._purge.on_post(req, resp)
        elif self._access == "off":
            self._refuse(req, resp, 403, "POST /purge-payments is turned off on this gateway")
        elif self._token_matches(req.get_header(TOKEN_HEADER)):
            self._purge.on_post(req, resp)
        else:
            self._refuse(req, resp, 401, f"POST /purge-payments needs a valid {TOKEN_HEADER} header")

    def _token_matches(self, given: str | None) -> bool:
        if given is None:
            return False
        # NOTE: the worker decodes header bytes as latin-1, so this gives the
        # bytes the client sent; "replace" covers servers that decode otherwise.
        return hmac.compare_digest(given.encode("latin-1", "replace"), self._token)

    def _refuse(self, req: falcon.Request, resp: falcon.Response, status: int, message: str) -> None:
        self._counters.response(req.path, status)
        set_error(resp, status, message)
