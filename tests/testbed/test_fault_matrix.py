"""The fault matrix (bruto.testbed.faults.matrix) in CI: every row on one supervised stack, under load.

Each row must end with nothing lost, nothing doubled, nothing stored that
its client was not answered 202 for, and the service whole again; the
consistency probe must stay at 0 except where the row documents why not
(payments a processor stored while bruto could not learn it yet). Every row's
figures are written to ``BRUTO_FAULTS_REPORT`` (JSON lines) when it is set:
docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import json
import os

import pytest

from bruto.testbed.faults import matrix

pytestmark = pytest.mark.slow  # real processes

# The rows whose probe may count payments a processor holds before bruto's ledger does.
MAY_LAG = {"dispatcher-kill", "dispatcher-stop", "processor-close", "processor-garbage", "processor-late",
           "processor-down"}
# Rows that cut client connections: requests in flight there fail (never answered 202).
MAY_FAIL = {"worker-kill", "master-kill", "instance-kill", "balancer-kill"}
RESTARTED = {"master-kill": {"api1": 1}, "instance-kill": {"api1": 1}, "balancer-kill": {"balancer": 1},
             "dispatcher-kill": {"dispatcher": 1}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = matrix.World(tmp_path_factory.mktemp("faults")).start()
    try:
        yield world
    finally:
        world.stop()


@pytest.mark.parametrize("row", matrix.ROWS, ids=matrix.ROW_NAMES)
def test_fault(world, row):
    result = matrix.run_row(world, row, matrix.CI)
    report = os.environ.get("BRUTO_FAULTS_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(json.dumps(result) + "\n")
    assert result["whole_after_s"] is not None, result["not_whole"]
    assert (result["lost"], result["doubled"], result["extra"]) == (0, 0, 0), result
    assert result["stored_default"] + result["stored_fallback"] == result["accepted"], result
    assert result["stored_fallback"] == 0, result  # no fault here lasts past default's patience
    if row.name not in MAY_LAG:
        assert result["inconsistency"] == 0, result
    if row.name not in MAY_FAIL:
        assert result["accepted"] == result["attempts"], result
    assert result["restarts"] == RESTARTED.get(row.name, {}), result
