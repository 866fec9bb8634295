"""A local payment processor that behaves like the challenge's (docs/EMULATOR.md).

- ``server``: the HTTP service (``bruto-emulator``).
- ``store``: its payments table.
- ``limits``: its concurrency limiter and the service-health rate limit.
- ``control``: start, drive and stop emulators from Python.
"""
