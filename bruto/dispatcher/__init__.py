"""The dispatcher: moves accepted payments from intake to a processor.

Run it as ``bruto-dispatcher`` or ``python -m bruto.dispatcher``: the entry
point (``__main__``) patches the standard library for gevent before anything
else is imported. Importing this package patches nothing.

- ``outbox``: the core, a sans-I/O state machine (events in, actions out).
- ``service``: the gevent shell that carries out its actions.
- ``routing``, ``breaker``: where a payment goes (pure functions).
- ``delays``: the delay evidence that proves a payment absent.
- ``dedup``: the fixed-size index of the correlationIds held.
- ``outcomes``: what a processor answered, as values.
- ``health``: the service-health poller.
- ``processor``: the HTTP client of one processor.
- ``metrics``: the dispatcher's counters in shared memory (``metrics.bin``).

docs/DISPATCHER.md has the transition table and what each promise rests on.
"""
