"""The API instances: a Falcon app under gunicorn with bruto's gevent worker.

- ``app``: the HTTP API (validate, append to intake, answer; summaries).
- ``validation``: what a POST /payments body must be.
- ``counters``: the worker's counts of its answers, in its intake slab.
- ``metrics``: GET /metrics, every shared region in Prometheus' text format.
- ``worker``: the gunicorn worker class (gevent + httptools, balancer handoffs).
- ``gunicorn_conf``: gunicorn's settings, from ``bruto.config``.
- ``wsgi``: ``bruto.gateway.wsgi:app``, built in each worker after the fork.
"""
