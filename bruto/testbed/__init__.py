"""Stand-ins for the outside world, for tests and benchmarks: never imported by the product.

- ``emulator``: a local payment processor (``bruto-emulator``).
- ``stack``: the whole topology as local processes (``bruto-stack``).
- ``bench``: the challenge's load test and its score (``bruto-bench``).

Its dependencies are the ``testbed`` extra: ``pip install '.[testbed]'``.
"""
