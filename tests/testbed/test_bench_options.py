"""bruto-bench's choice of script and fees, without running k6."""

import argparse
from pathlib import Path

import pytest
import yaml

from bruto.testbed.bench import run as bench
from bruto.testbed.bench.compose import PROCESSORS_FILE
from bruto.testbed.bench.compose import ComposeBench
from bruto.testbed.bench.compose import default_compose_dir
from bruto.testbed.stack.services import emulator_services


def test_each_script_has_its_file_and_the_fees_it_ran_with():
    assert (bench.SCRIPTS["preview"].max_requests, bench.SCRIPTS["preview"].fees) == (550, ("0.05", "0.15"))
    assert (bench.SCRIPTS["final"].max_requests, bench.SCRIPTS["final"].fees) == (603, ("0.07", "0.10"))
    for script in bench.SCRIPTS.values():
        assert (bench.HERE / script.file).exists()


def test_a_hung_k6_is_told_from_a_long_script():
    # The final's 300 s plus 30 s of grace and the teardown fit; the preview keeps its 240 s.
    assert bench.k6_timeout_s(bench.SCRIPTS["final"]) > 300 + 30 + 60
    assert bench.k6_timeout_s(bench.SCRIPTS["preview"]) == 240
    assert bench.k6_timeout_s(bench.SCRIPTS["final"], 0.1) == 30 + bench.K6_MARGIN_S


@pytest.mark.parametrize(("text", "fees"), [("0.07,0.10", ("0.07", "0.10")), ("0,0.5", ("0", "0.5"))])
def test_fees_option(text, fees):
    assert bench.parse_fees(text) == fees


@pytest.mark.parametrize("text", ["0.07", "0.07,0.10,0.2", "x,0.1", "0.07,1", "-0.01,0.1"])
def test_bad_fees_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_fees(text)


def test_fees_only_for_emulators_the_bench_starts(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--fees", "0.07,0.10", "--target", "http://127.0.0.1:9999"])
    assert "--fees sets the emulators" in capsys.readouterr().err


def test_time_scale_is_a_compression(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--time-scale", "2"])
    assert "--time-scale must be in (0, 1]" in capsys.readouterr().err


def test_emulators_get_the_fees():
    argvs = [service.argv for service in emulator_services(8001, 8002, ("0.07", "0.10"))]
    assert [argv[argv.index("--fee") + 1] for argv in argvs] == ["0.07", "0.10"]


def test_compose_processors_take_the_fees_from_the_environment(tmp_path):
    bench_compose = ComposeBench(default_compose_dir(), tmp_path / "compose.log", ("0.07", "0.10"))
    assert bench_compose.processors.env == {"PROCESSOR_DEFAULT_FEE": "0.07", "PROCESSOR_FALLBACK_FEE": "0.10"}
    services = yaml.safe_load(Path(default_compose_dir(), PROCESSORS_FILE).read_text())["services"]
    commands = {name: service["command"] for name, service in services.items()}
    fee = {name: command[command.index("--fee") + 1] for name, command in commands.items()}
    # Unset, the preview's fees (what `docker compose -f ... up` by hand has always started).
    assert fee == {"payment-processor-default": "${PROCESSOR_DEFAULT_FEE:-0.05}",
                   "payment-processor-fallback": "${PROCESSOR_FALLBACK_FEE:-0.15}"}
