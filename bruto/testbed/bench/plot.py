"""One picture per run: where the tail is, what waited, what used the CPU.

Three panels over the seconds of the test, from the first POST on:
POST /payments p50 and p99 per second with the floor's p99 (same script,
same invocation); bruto's backlog (intake and outbox, from its shared
memory) with the payments accepted per second; the CPU each part used
(cores) with the machine's busy CPU. Drawn with matplotlib (the testbed's
extra), without a display.
"""

from __future__ import annotations

from pathlib import Path

SLOWEST_MS = 1000  # clamps the log scale: a request timing out at 1.5 s would flatten the rest


def draw(path: Path, title: str, latency: list[dict], floor_latency: list[dict] | None,
         seconds: dict, p99_ms: float | None, floor_p99_ms: float | None) -> Path:
    """Write the PNG of one run.

    Args:
        path: Where.
        title: The first line of the picture (script, run, score).
        latency: bruto's ``timeline.per_second`` rows.
        floor_latency: the floor's, or None (``--no-floor``).
        seconds: ``sampler.series`` of bruto's run.
        p99_ms: The run's scored p99, drawn as a line; the floor's likewise.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (lat, backlog, cpu) = pyplot.subplots(3, 1, figsize=(13, 10), sharex=True,
                                                  gridspec_kw={"height_ratios": [3, 2, 2]})
    figure.suptitle(title, fontsize=10)

    def line(axes, rows, field, **style):
        axes.plot([r["t"] for r in rows], [min(r[field], SLOWEST_MS) for r in rows], **style)

    line(lat, latency, "p99_ms", color="tab:red", label="bruto p99 per second")
    line(lat, latency, "p50_ms", color="tab:orange", label="bruto p50 per second")
    if floor_latency:
        line(lat, floor_latency, "p99_ms", color="tab:gray", label="floor p99 per second")
    if p99_ms is not None:
        lat.axhline(p99_ms, color="tab:red", linestyle=":", label=f"bruto p99 {p99_ms:.2f} ms (scored)")
    if floor_p99_ms is not None:
        lat.axhline(floor_p99_ms, color="tab:gray", linestyle=":", label=f"floor p99 {floor_p99_ms:.2f} ms")
    lat.set_yscale("log")
    lat.set_ylabel("POST /payments, ms")
    lat.legend(loc="upper left", fontsize=8)
    lat.grid(True, which="both", alpha=0.3)

    t = seconds.get("t", [])
    counters = seconds.get("backlog", {})
    for name, color in (("intake_backlog", "tab:blue"), ("outbox_in_use", "tab:purple")):
        if name in counters:
            backlog.plot(t, counters[name], color=color, label=name.replace("_", " "))
    backlog.set_ylabel("payments waiting")
    if "accepted" in counters:
        accepted = counters["accepted"]
        rates = [None] + [
            None if a is None or b is None or t1 <= t0 else (b - a) / (t1 - t0)
            for a, b, t0, t1 in zip(accepted, accepted[1:], t, t[1:])
        ]
        arrivals = backlog.twinx()
        arrivals.plot(t, rates, color="tab:green", alpha=0.6, label="accepted per second")
        arrivals.set_ylabel("accepted / s")
        arrivals.legend(loc="upper right", fontsize=8)
    if counters:
        backlog.legend(loc="upper left", fontsize=8)
    backlog.grid(True, alpha=0.3)

    for name, values in sorted(seconds.get("cpu_cores", {}).items()):
        cpu.plot(t, values, label=name, linewidth=1)
    if t:
        cpu.plot(t, seconds["busy_cores"], color="black", linestyle="--", linewidth=1, label="machine busy")
    cpu.set_ylabel("CPU, cores")
    cpu.set_xlabel("seconds from the first POST")
    cpu.legend(loc="upper left", fontsize=7, ncol=4)
    cpu.grid(True, alpha=0.3)

    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
    return path
