"""bruto: a payment intermediary on Falcon, gunicorn/gevent and numpy shared memory.

One package per process role, on one shared substrate:

- ``bruto.shm``: the shared-memory regions every role maps (layouts, intake, ledger).
- ``bruto.gateway``: the HTTP API, served by gunicorn workers.
- ``bruto.dispatcher``: sends accepted payments to the processors.
- ``bruto.balancer``: hands client connections to the API instances.
- ``bruto.inspector``: ``bruto-shm``, what the shared memory holds.
- ``bruto.testbed``: stand-ins for the outside world (processor emulator, the
  process stack, the benchmark); the product never imports it.
"""
