"""Every error bruto answers has one shape, ``{"error": "<what is wrong>"}``, built here.

The app's answers (bruto.gateway.app, admin, metrics) go through :func:`set_error`;
the answers the HTTP server gives before any app sees a request
(bruto.gateway.worker's rejections) use :func:`error_body`.
"""

from __future__ import annotations

import falcon
import orjson

JSON = "application/json"


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def set_error(resp: falcon.Response, status: int, message: str) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = error_body(message)
