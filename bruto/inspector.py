"""``bruto-shm``: what the shared-memory regions hold, once or live.

    bruto-shm                 one table
    bruto-shm --json          one snapshot as JSON (bruto.shm.snapshot), for scripts
    bruto-shm --watch [S]     a live view, refreshed every S seconds (1 by default):
                              rates between refreshes, backlog, breakers, latency
    bruto-shm --payment ID    where one payment is (what GET /payments/{ID} answers);
                              exit status 1 if bruto holds none (with --json: the body)

Read-only: it attaches to existing regions (never creates them), takes no
lock a writer waits for, and reads the same counters the metrics endpoint
renders. Without ``--shm-dir`` it reads ``BRUTO_SHM_DIR`` (``/dev/shm/bruto``
by default), where ``bruto-stack up`` and the compose file put the regions. A
missing, foreign or truncated region is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bruto.config import SettingError
from bruto.config import Settings
from bruto.gateway.validation import InvalidPayment
from bruto.gateway.validation import parse_correlation_id
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.lookup import Payment
from bruto.shm.region import RegionError
from bruto.shm.snapshot import SharedRegions

CLEAR = "\x1b[H\x1b[2J"


def _cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _alive(flag: bool) -> str:
    return "alive" if flag else "not running"


def _payments(n: int) -> str:
    return f"{n} payment{'' if n == 1 else 's'}"


def _attempts(processor: dict) -> str:
    """``3 attempts (1 of them a retry): stored 2, failed 1``; ``no attempts`` before the first."""
    attempts, retries = processor["attempts"], processor["retries"]
    if not attempts:
        return "no attempts"
    outcomes = ", ".join(f"{outcome} {n}" for outcome, n in processor["outcomes"].items() if n)
    return (f"{attempts} attempt{'' if attempts == 1 else 's'} "
            f"({retries} of them {'a retry' if retries == 1 else 'retries'})" + (f": {outcomes}" if outcomes else ""))


def table(snap: dict) -> str:
    """The one-shot view: totals since the regions were created, and the state now."""
    lines = [f"shared directory {snap['shm_dir']}"]
    d, g = snap["dispatcher"], snap["gateway"]
    lines.append(f"dispatcher pid {d['pid']} ({_alive(d['alive'])}): duplicates dropped {d['duplicates_dropped']}, "
                 f"purges {d['purges']}")
    refused = {reason: n for reason, n in g["rejections"].items() if n}
    lines.append(f"gateway: {g['workers_alive']} workers alive, {_payments(g['accepted'])} accepted, "
                 f"backlog {g['backlog']}; refused: "
                 + (", ".join(f"{reason} {n}" for reason, n in refused.items()) or "none"))
    for slab in snap["intake"]:
        if slab["written"] or slab["owner_alive"]:
            owner = f"pid {slab['owner_pid']} {'alive' if slab['owner_alive'] else 'gone'}"
            lines.append(f"intake slot {slab['slot']:2d}: written {slab['written']}, backlog {slab['backlog']} ({owner})")
    o = snap["outbox"]
    waiting = o["queued"] + o["sent"] + o["unresolved"]
    lines.append(f"outbox: {_payments(waiting)} not confirmed yet (capacity {o['capacity']}): "
                 f"{o['queued']} queued, {o['sent']} out to a processor now, "
                 f"{o['unresolved']} unresolved (a lookup decides)")
    led = snap["ledger"]
    lines.append(f"ledger: {led['retained']} counted of {led['count']} appended (capacity {led['capacity']}"
                 f"{', wrapped' if led['wrapped'] else ''})")
    for name, p in snap["processors"].items():
        h = p["health"]
        lines.append(
            f"  {name:8s}: {p['ledger']['totalRequests']} payments, {_cents(p['ledger']['totalCents'])}; "
            f"breaker {p['breaker_state'].replace('_', '-')}, failing {'yes' if h['failing'] else 'no'}, "
            f"delay {h['min_response_ms']} ms, p90 {h['latency_p90_ms']} ms; "
            + _attempts(p))
    c = snap.get("cluster")
    if c is not None:
        lines.append(f"cluster: database {'up' if c['db_up'] else 'DOWN'}"
                     f"{', polls service-health' if c['poller'] else ''}; claimed {c['claimed']} new, "
                     f"{c['resumed']} resumed, {c['cross_host_duplicates']} dropped (another host's); "
                     f"{c['unpublished']} unpublished; lease {'held' if c['lease_held'] else 'NOT HELD'}, "
                     f"{c['takeovers']} takeover(s), {c['taken_over']} taken, {c['fenced']} fenced; "
                     f"errors: claim {c['claim_errors']}, publish {c['publish_errors']}, lease {c['lease_errors']}")
    return "\n".join(lines)


def payment_view(found, correlation_id: bytes) -> str:
    """One payment in words: what GET /payments/{id} answers, for an operator without HTTP."""
    text = json.loads(found.json() if isinstance(found, Payment) else found.json(correlation_id))
    if not isinstance(found, Payment):
        return f"{text['error']} (reason: {found.reason})"
    line = f"payment {text['correlationId']}: {found.state.replace('_', ' ')}, amount {text['amount']}"
    if found.processor:
        line += f", processor {found.processor}, requestedAt {text['requestedAt']}"
    if found.unresolved:
        line += " (unresolved: its answer was lost; bruto looks it up on that processor)"
    return line


def _rate(now: int, before: int, seconds: float) -> float:
    return max(now - before, 0) / seconds if seconds > 0 else 0.0


def _quantile(buckets: list[int], bounds: list[int], q: float) -> str:
    """The upper bound of the bucket holding quantile ``q`` of ``buckets`` (counts per bucket)."""
    total = sum(buckets)
    if not total:
        return "-"
    seen = 0
    for bound, n in zip([*bounds, None], buckets):
        seen += n
        if seen >= q * total:
            return f">{bounds[-1] / 1000:g} ms" if bound is None else f"<={bound / 1000:g} ms"
    return "-"


def watch_view(snap: dict, before: dict) -> str:
    """The live view: rates between two snapshots, and the state at the later one."""
    seconds = snap["taken_at"] - before["taken_at"]
    d, g = snap["dispatcher"], snap["gateway"]
    lines = [f"bruto-shm --watch  {snap['shm_dir']}  {time.strftime('%H:%M:%S', time.localtime(snap['taken_at']))}"
             f"  (rates over {seconds:.1f} s; Ctrl-C to stop)",
             f"dispatcher {_alive(d['alive'])}, pid {d['pid']}; web workers alive {g['workers_alive']}", ""]
    confirmed = sum(p["confirmed"] for p in snap["processors"].values())
    confirmed_before = sum(p["confirmed"] for p in before["processors"].values())
    refused = sum(g["rejections"].values())
    refused_before = sum(before["gateway"]["rejections"].values())
    o = snap["outbox"]
    lines.append(f"payments/s   in {_rate(g['accepted'], before['gateway']['accepted'], seconds):8.1f}"
                 f"   out {_rate(confirmed, confirmed_before, seconds):8.1f}"
                 f"   refused {_rate(refused, refused_before, seconds):6.1f}")
    lines.append(f"backlog      intake {g['backlog']}   outbox queued {o['queued']}   sent {o['sent']}   "
                 f"unresolved {o['unresolved']}   ledger {snap['ledger']['retained']}/{snap['ledger']['capacity']}")
    wait = snap["dispatcher"]["outbox_wait"]
    wait_before = before["dispatcher"]["outbox_wait"]
    wait_delta = [a - b for a, b in zip(wait["buckets"], wait_before["buckets"])]
    lines.append(f"accept->confirm p50 {_quantile(wait_delta, snap['latency_bounds_us'], 0.5)}"
                 f"   p99 {_quantile(wait_delta, snap['latency_bounds_us'], 0.99)}")
    lines.append("")
    lines.append(f"{'processor':10}{'breaker':11}{'failing':>8}{'delay':>8}{'sent/s':>9}{'stored/s':>10}"
                 f"{'failed/s':>10}{'unknown/s':>11}{'lookups/s':>11}   send latency (last interval)")
    for name in PROCESSOR_NAMES:
        p, b = snap["processors"][name], before["processors"][name]
        latency = [a - c for a, c in zip(p["send_latency"]["buckets"], b["send_latency"]["buckets"])]
        count = sum(latency)
        mean = (p["send_latency"]["sum_us"] - b["send_latency"]["sum_us"]) / count / 1000 if count else None
        lines.append(
            f"{name:10}{p['breaker_state'].replace('_', '-'):11}{'yes' if p['health']['failing'] else 'no':>8}"
            f"{p['health']['min_response_ms']:>6}ms"
            f"{_rate(p['attempts'], b['attempts'], seconds):9.1f}"
            f"{_rate(p['outcomes']['stored'], b['outcomes']['stored'], seconds):10.1f}"
            f"{_rate(p['outcomes']['failed'], b['outcomes']['failed'], seconds):10.1f}"
            f"{_rate(p['outcomes']['unknown'], b['outcomes']['unknown'], seconds):11.1f}"
            f"{_rate(sum(p['lookups'].values()), sum(b['lookups'].values()), seconds):11.1f}"
            f"   " + ("-" if mean is None else
                      f"mean {mean:.1f} ms, p90 {_quantile(latency, snap['latency_bounds_us'], 0.9)}"))
    return "\n".join(lines)


def watch(regions: SharedRegions, interval: float, count: int | None, out=None) -> None:
    """Print :func:`watch_view` every ``interval`` seconds (``count`` times, or until interrupted)."""
    out = out or sys.stdout
    before = regions.read()
    shown = 0
    while count is None or shown < count:
        time.sleep(interval)
        snap = regions.read()
        out.write((CLEAR if out.isatty() else "") + watch_view(snap, before) + "\n\n")
        out.flush()
        before = snap
        shown += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-shm", description=__doc__.splitlines()[0])
    parser.add_argument("--shm-dir", help="shared directory (default: BRUTO_SHM_DIR or /dev/shm/bruto)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one snapshot as JSON")
    shown.add_argument("--watch", nargs="?", type=float, const=1.0, metavar="SECONDS",
                       help="refresh a live view every SECONDS (default 1)")
    parser.add_argument("--payment", metavar="CORRELATION_ID",
                        help="where one payment is (GET /payments/{id}; --json: its body); "
                             "exit status 1 if bruto holds none")
    parser.add_argument("--count", type=int, help="with --watch: stop after this many refreshes")
    args = parser.parse_args(argv)
    if args.payment is not None:
        if args.watch is not None:
            parser.error("--payment shows one payment once; it does not go with --watch")
        try:
            correlation_id = parse_correlation_id(args.payment)
        except InvalidPayment as error:
            parser.error(f"--payment: {error.message}")
    try:
        shm_dir = args.shm_dir or Settings.from_env().shm_dir
        regions = SharedRegions(shm_dir)
        if args.payment is not None:
            found = regions.finder().find(correlation_id)
            if args.json:
                print((found.json() if isinstance(found, Payment) else found.json(correlation_id)).decode())
            else:
                print(payment_view(found, correlation_id))
            return 0 if isinstance(found, Payment) else 1
        if args.watch is not None:
            if args.watch <= 0:
                parser.error("--watch needs a positive number of seconds")
            watch(regions, args.watch, args.count)
        elif args.json:
            print(json.dumps(regions.read(), indent=2))
        else:
            print(table(regions.read()))
    except (RegionError, SettingError) as error:
        print(f"bruto-shm: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `bruto-shm --watch | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
