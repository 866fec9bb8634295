"""The dispatcher: moves accepted payments from intake to a processor.

Run it as ``bruto-dispatcher`` or ``python -m bruto.dispatcher``: the entry
point (``__main__``) patches the standard library for gevent before anything
else is imported. Importing this package patches nothing.

- ``service``: the dispatcher loop and its start-up.
- ``routing``, ``breaker``: where a payment goes (pure functions).
- ``health``: the service-health poller.
- ``processor``: the HTTP client of one processor.
- ``metrics``: the dispatcher's counters in shared memory (``metrics.bin``).
"""
