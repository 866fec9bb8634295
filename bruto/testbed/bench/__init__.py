"""The challenge's load test (``rinha.js``, k6) against bruto and a static floor: ``bruto-bench``."""
