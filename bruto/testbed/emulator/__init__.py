"""A local payment processor that behaves like the challenge's (docs/EMULATOR.md).

- ``server``: the HTTP service (``bruto-emulator``).
- ``dotnet``: how the real service reads and writes values (System.Text.Json,
  .NET decimal and DateTime, Npgsql, PostgreSQL).
- ``store``: its payments table.
- ``limits``: its concurrency limiter and the service-health rate limit.
- ``control``: start, drive and stop emulators from Python.
"""
