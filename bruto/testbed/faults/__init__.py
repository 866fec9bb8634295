"""Faults on demand: a misbehaving processor (``processor``), official-like load and the consistency probe
(``load``), and the fault matrix over the supervised stack (``matrix``, ``bruto-faults``)."""
