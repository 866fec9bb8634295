"""Hostile input through the real worker: never a 5XX, never a state change, never a stalled worker.

One gunicorn with one worker (so every probe reaches the worker that took the
hostile request), a dispatcher, and a purge token (so a hostile purge is a
refusal, not a purge). Each hypothesis example is raw bytes on a fresh
connection, half-closed after sending, read until the worker closes it; then a
GET /payments-summary on another connection must be answered (the worker is
not stalled). Around each test, the shared directory is read: payments
accepted, the ledger, the outbox and purges must be unchanged, and the only
counters that may grow are refusals (4XX, refusals by reason, protocol errors
other than 500) and the 200s of the read-only routes.

The number of examples per test is ``BRUTO_HOSTILE_EXAMPLES`` (default 300).
"""

from __future__ import annotations

import os
import re
import socket
import uuid

import pytest
from gateway import Gateway
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bruto.shm import snapshot

pytestmark = pytest.mark.slow  # real processes

EXAMPLES = int(os.environ.get("BRUTO_HOSTILE_EXAMPLES", "300"))
hostile = settings(max_examples=EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])  # `unchanged` spans every example, on purpose
TOKEN = "hostile-test-token-" + uuid.uuid4().hex
VALID_ID = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3"
READ_ONLY_ROUTES = ("payments_summary", "metrics")
# How long a read may wait for the worker: far beyond any answer, short of hanging CI.
STALL_S = 15.0


class Stalled(AssertionError):
    """The worker neither answered nor closed within STALL_S."""


@pytest.fixture(scope="module")
def gw(tmp_path_factory, processors):
    gateway = Gateway.start(tmp_path_factory.mktemp("hostile"), processors, workers=1, purge_token=TOKEN)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def unchanged(gw):
    """Asserts, after the test, that hostile input changed nothing but refusal counters."""
    workers = gw.worker_pids()
    before = snapshot.read(gw.env["BRUTO_SHM_DIR"])
    yield
    after = snapshot.read(gw.env["BRUTO_SHM_DIR"])
    assert gw.worker_pids() == workers, "a worker died and was replaced"
    assert_only_refusals_changed(before, after)


def assert_only_refusals_changed(before: dict, after: dict) -> None:
    assert after["gateway"]["accepted"] == before["gateway"]["accepted"]
    assert after["ledger"]["count"] == before["ledger"]["count"]
    assert after["outbox"]["in_use"] == before["outbox"]["in_use"] == 0
    assert after["dispatcher"]["purges"] == before["dispatcher"]["purges"]
    grown = []
    for route, statuses in after["gateway"]["requests"].items():
        for status, count in statuses.items():
            if count != before["gateway"]["requests"].get(route, {}).get(status, 0):
                grown.append((route, status))
    for route, status in grown:
        refusal = status.startswith("4")
        read_only = route in READ_ONLY_ROUTES and status == "200"
        assert refusal or read_only, f"{route} answered {status}: not a refusal"
    for full in ("intake_full", "overloaded"):  # refusals, but 503s: never for hostile input
        assert after["gateway"]["rejections"][full] == before["gateway"]["rejections"][full]
    assert after["gateway"]["protocol_errors"]["500"] == before["gateway"]["protocol_errors"]["500"]


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def statuses(stream: bytes) -> list[int]:
    """The statuses of the answers in ``stream`` (answers carry a Content-Length, 1XX none)."""
    found = []
    while stream:
        match = _STATUS_LINE.match(stream)
        assert match, f"not an HTTP answer: {stream[:200]!r}"
        head, sep, rest = stream.partition(b"\r\n\r\n")
        assert sep, f"an answer without the end of its head: {stream[:200]!r}"
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        size = int(length.group(1)) if length else 0
        found.append(int(match.group(1)))
        stream = rest[size:]
    return found


def exchange(port: int, data: bytes) -> list[int]:
    """Send ``data`` on a new connection, half-close it, read until the worker closes: the statuses."""
    with socket.create_connection(("127.0.0.1", port), timeout=STALL_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before it read everything: what it answered is still read
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break  # closed with our bytes unread: the kernel may drop the answer (a reset)
            except TimeoutError:
                raise Stalled(f"no answer and no close within {STALL_S} s for {data[:200]!r}") from None
            if not chunk:
                break
            received += chunk
    return statuses(received)


def check(gw: Gateway, data: bytes, allowed=range(100, 500)) -> list[int]:
    """One hostile exchange: every answer below 500 (and in ``allowed``), then the worker still answers."""
    answered = exchange(gw.port, data)
    assert all(status in allowed for status in answered), (answered, data[:300])
    probe = exchange(gw.port, b"GET /payments-summary HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert probe == [200], f"the worker did not answer a probe after {data[:300]!r}"
    return answered


def request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"",
            version: bytes = b"HTTP/1.1") -> bytes:
    lines = [b"%s %s %s" % (method, target, version)] + [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    headers = [(b"Host", b"t"), (b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
    return request(b"POST", b"/payments", headers + list(extra), body)


# ------------------------------------------------------------------ bodies

NUMBER_TOKENS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e308", b"1.7976931348623157e308", b"1e-400",
    b"1" + b"0" * 400, b"-" + b"9" * 40, b"99999999999999999999", b"-0", b"0", b"0.0", b"-19.90", b"1000000000.01",
    b"0x10", b".5", b"5.", b"+1", b"01.00", b"1e", b"--1", b"1.2.3", b'"19.90"', b"true", b"null", b"[]", b"{}",
    b"[19.90]", b'{"value": 19.90}',
]
NON_UUIDS = [
    "", "nope", VALID_ID[:-1], VALID_ID + "0", VALID_ID.replace("-", ""), "{%s}" % VALID_ID, "urn:uuid:" + VALID_ID,
    VALID_ID[:-2] + "_b", " " + VALID_ID[:-1], "\u0664" + VALID_ID[1:], VALID_ID[:-1] + "\u0000",
    VALID_ID.replace("a", "g"), "-" * 36,
]


def over_precise() -> st.SearchStrategy[bytes]:
    """Amounts with 3 to 8 decimals, the last one not 0, within 15 significant digits (a double tells them apart)."""
    return st.integers(3, 8).flatmap(lambda places: st.tuples(
        st.integers(0, 10 ** max(0, 14 - places) - 1), st.integers(1, 10 ** places - 1).filter(lambda f: f % 10),
    ).map(lambda t: b"%d.%0*d" % (t[0], places, t[1])))


hostile_amounts = st.one_of(st.sampled_from(NUMBER_TOKENS), over_precise(),
                            st.integers(-10**12, 0).map(lambda n: b"%d" % n),
                            st.integers(10**9 + 1, 10**30).map(lambda n: b"%d" % n),
                            st.floats(allow_nan=False, allow_infinity=False, max_value=0).map(lambda f: repr(f).encode()))
hostile_ids = st.one_of(st.sampled_from(NON_UUIDS).map(lambda s: b'"%s"' % s.encode("utf-8")),
                        st.text(max_size=40).filter(lambda s: len(s) != 36).map(lambda s: _json_string(s)),
                        st.sampled_from([b"1", b"null", b"true", b"[]", b'{"id": "%s"}' % VALID_ID.encode()]),
                        st.binary(min_size=1, max_size=40).map(lambda b: b'"' + b.replace(b'"', b"") + b'"'))
valid_ids = st.uuids().map(lambda u: b'"%s"' % str(u).encode())
valid_amounts = st.sampled_from([b"19.90", b"1", b"0.01", b"1000000000.00"])


def _json_string(text: str) -> bytes:
    import json
    return json.dumps(text).encode()


@st.composite
def hostile_objects(draw) -> bytes:
    """A payment object with at least one hostile field (or a field missing), keys in any order."""
    kind = draw(st.sampled_from(["id", "amount", "both", "no-id", "no-amount", "duplicate"]))
    correlation = draw(hostile_ids if kind in ("id", "both") else valid_ids)
    amount = draw(hostile_amounts if kind in ("amount", "both", "duplicate") else valid_amounts)
    fields = [b'"correlationId":' + correlation, b'"amount":' + amount]
    if kind == "no-id":
        fields = fields[1:]
    elif kind == "no-amount":
        fields = fields[:1]
    elif kind == "duplicate":  # the last of repeated keys counts: a valid one first, a hostile one last
        fields = [b'"correlationId":' + correlation, b'"amount":19.90', b'"amount":' + amount]
    extra = draw(st.lists(st.sampled_from([b'"x":1', b'"amount_cents":1990', b'"requestedAt":"2020-01-01"']),
                          max_size=2))
    fields = extra + fields if draw(st.booleans()) else fields + extra
    return b"{" + b",".join(fields) + b"}"


@st.composite
def nested(draw) -> bytes:
    depth = draw(st.integers(1, 2000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    closed = draw(st.booleans())
    return opener * depth + b"1" + (closer * depth if closed else b"")


@st.composite
def invalid_utf8(draw) -> bytes:
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\x80"]))
    where = draw(st.sampled_from(["id", "key", "amount"]))
    if where == "id":
        return b'{"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60' + bad + b'","amount":19.90}'
    if where == "key":
        return b'{"correlationId":"%s","amount' % VALID_ID.encode() + bad + b'":19.90}'
    return b'{"correlationId":"%s","amount":19.9' % VALID_ID.encode() + bad + b"}"


payment_bodies = st.one_of(hostile_objects(), nested(), invalid_utf8(), st.binary(max_size=400),
                           st.binary(min_size=4097, max_size=6000))


@hostile
@given(body=payment_bodies)
def test_hostile_payment_bodies_are_refused(gw, unchanged, body):
    answered = check(gw, post(body), allowed=(400, 413, 422))
    assert len(answered) == 1


# ----------------------------------------------------------------- headers

header_names = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1,
            max_size=30).map(str.encode),
    st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Host", b"Expect", b"Connection", b"Upgrade",
                     b"X-Bruto-Token", b"Content-Type", b"X_Forwarded_For", b"Trailer", b"TE"]),
    st.binary(min_size=1, max_size=20),
)
header_values = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"chunked", b"gzip, chunked", b"100-continue", b"close", b"upgrade", b"h2c", b"-1", b"1e3",
                     b"99999999999999999999", b" 5", b"0x10", b"\x00", b"a\r\n b", TOKEN.encode()[:-1]]),
    st.integers(1, 20_000).map(lambda n: b"v" * n),
)


@hostile
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=8),
       many=st.sampled_from([0, 0, 0, 99, 101, 150]),
       target=st.sampled_from([b"/payments-summary", b"/metrics", b"/payments", b"/purge-payments", b"/nowhere"]),
       method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS"]))
def test_hostile_headers_get_no_5xx_and_change_nothing(gw, unchanged, headers, many, target, method):
    body = b'{"correlationId":"%s","amount":0}' % VALID_ID.encode()  # refused on POST /payments whatever the headers
    headers = [(b"Host", b"t")] + headers + [(b"X-Filler-%d" % n, b"x") for n in range(many)]
    check(gw, request(method, target, headers + [(b"Content-Length", b"%d" % len(body))], body))


# -------------------------------------------------------- the request line

targets = st.one_of(
    st.sampled_from([b"*", b"//payments", b"/payments/", b"/payments/../payments-summary", b"/%2e%2e/etc/passwd",
                     b"/payments%00", b"/payments%ff%fe", b"/payments-summary#frag", b"http://evil.example/nowhere",
                     b"/%", b"/%zz", b"/payments?%ff=%fe", b"/" + b"a" * 5000, b"/metrics?" + b"x=" * 3000]),
    st.binary(min_size=1, max_size=80).map(lambda b: b"/" + b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")),
    st.text(max_size=80).map(lambda t: b"/" + t.encode("utf-8").replace(b" ", b"%20")),
)
methods = st.one_of(st.sampled_from([b"GET", b"POST", b"CONNECT", b"TRACE", b"PRI", b"get", b"G\x00T", b""]),
                    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-!#", min_size=1, max_size=12).map(str.encode))
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1", b"HTTP/1",
                            b"", b"HTTP/1.1 extra"])


@hostile
@given(method=methods, target=targets, version=versions)
def test_hostile_request_lines_get_no_5xx_and_change_nothing(gw, unchanged, method, target, version):
    body = b'{"amount":1}'
    headers = [(b"Host", b"t"), (b"Content-Length", b"%d" % len(body))]
    check(gw, request(method, target, headers, body, version))


# ------------------------------------------------------------ query strings

dates = st.one_of(
    st.text(max_size=70),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999+23:59", "0001-01-01T00:00:00-23:59",
                     "99999-01-01T00:00:00Z", "2020-02-30T00:00:00Z", "2020-07-10T12:34:56.000000000000Z",
                     "2020-07-10T25:00:00Z", "2020-07-10T12:34:56+99:00", "2020-07-10", "-2020-07-10",
                     "2020-07-10T12:34:56.000Z" * 3, "1e10", "NaN", "", "\x00"]),
)


def percent(text: str) -> bytes:
    return b"".join(b"%%%02X" % byte for byte in text.encode("utf-8", "surrogatepass"))


@hostile
@given(pairs=st.lists(st.tuples(st.sampled_from(["from", "to", "From", "fr%6Fm", "x", ""]), dates), max_size=4),
       raw=st.sampled_from([b"", b"&", b"from=%ff", b"from&to", b"=&=", b"from=2020-07-10T12:34:56.000Z%00"]),
       target=st.sampled_from([b"/payments-summary", b"/metrics"]))
def test_hostile_query_strings_get_no_5xx_and_change_nothing(gw, unchanged, pairs, raw, target):
    query = b"&".join(name.encode() + b"=" + percent(value) for name, value in pairs)
    query = query + (b"&" + raw if raw and query else raw)
    answered = check(gw, request(b"GET", target + b"?" + query, [(b"Host", b"t")]))
    assert answered in ([200], [400], [414]), answered


# ---------------------------------------------------------------- smuggling

SMUGGLED = post(b'{"correlationId":"%s","amount":19.90}' % str(uuid.uuid4()).encode())


@pytest.mark.parametrize("framing", [
    [(b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked")],           # CL.TE
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"4")],           # TE.CL
    [(b"Content-Length", b"0"), (b"Content-Length", b"%d" % len(SMUGGLED))],   # two lengths
    [(b"Content-Length", b"5"), (b"Content-Length", b"5")],                    # the same length twice
    [(b"Content-Length", b"0, 5")],
    [(b"Content-Length", b"\r\n 0")],                                          # obs-fold
    [(b"Transfer-Encoding", b"\r\n chunked")],                                 # obs-fold
    [(b"X-Folded", b"a\r\n b"), (b"Content-Length", b"0")],                    # obs-fold elsewhere
    [(b"Transfer-Encoding", b"xchunked")],
    [(b"Transfer-Encoding", b"chunked, identity")],
    [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"identity")],
    [(b"Content-Length ", b"0")],                                              # space before the colon
    [(b"Content-Length", b"-1")],
    [(b"Content-Length", b"+0")],
], ids=lambda framing: b"|".join(n + b":" + v for n, v in framing).decode("latin-1").replace("\r\n", "\\r\\n"))
def test_ambiguous_framing_is_refused_and_the_smuggled_payment_never_runs(gw, unchanged, framing):
    """A payment hidden behind an ambiguous length: 400, the connection closed, nothing accepted."""
    data = request(b"POST", b"/payments-summary", [(b"Host", b"t")] + framing, b"0\r\n\r\n" + SMUGGLED)
    assert check(gw, data) == [400]


def test_a_bare_lf_request_is_refused(gw, unchanged):
    assert check(gw, b"POST /payments HTTP/1.1\nHost: t\nContent-Length: 0\n\n" + SMUGGLED) == [400]


@pytest.mark.parametrize("data, answered", [
    (b"GET /payments-summary HTTP/1.1\r\nHost: t\r\nContent-Length: 9999\r\n\r\n{}", [413]),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", [414]),
    (b"GET /payments-summary HTTP/1.1\r\nX-Big: " + b"v" * 900_000 + b"\r\n\r\n", [431]),
    (b"POST /payments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n"
     + b"1000\r\n" + b"x" * 4096 + b"\r\n0\r\n\r\n", [413]),
    (b"POST /payments HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 9000\r\n\r\n", [413]),
    (b"POST /purge-payments HTTP/1.1\r\nHost: t\r\nX-Bruto-Token: " + TOKEN.encode()[:-1] + b"\r\n\r\n", [401]),
    (b"POST /purge-payments HTTP/1.1\r\nHost: t\r\nX-Bruto_Token: " + TOKEN.encode() + b"\r\n\r\n", [401]),
])
def test_oversized_and_unauthorised_requests_get_their_refusal(gw, unchanged, data, answered):
    assert check(gw, data) == answered
