"""The shared substrate: memory-mapped regions and the records they hold.

- ``region``: a region file (header, counters, records) and its checks.
- ``layout``: every region's layout, declared once.
- ``intake``: the web worker's slab of accepted payments.
- ``ledger``: the payments the processors confirmed, and their sums.
- ``snapshot``: every region read at once, as plain numbers (GET /metrics, ``bruto-shm``).
"""
