"""bruto.gateway.http1: the HTTP/1.1 protocol alone, bytes in and bytes out, no socket.

Table tests of request shapes and of refusals, then properties: any split of
a byte stream gives the same requests (and the same refusal); pipelined
requests are answered in order; every refusal closes the connection.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bruto.gateway.http1 import CONTINUE
from bruto.gateway.http1 import Connection
from bruto.gateway.http1 import Limits
from bruto.gateway.http1 import Rejection
from bruto.gateway.validation import MAX_BODY

TEMPLATE = {"wsgi.version": (1, 0), "REMOTE_ADDR": "127.0.0.1"}
DATE = "Sun, 06 Dec 2026 12:00:00 GMT"


def connection() -> Connection:
    return Connection(dict(TEMPLATE), Limits(), date=lambda: DATE)


def shape(request) -> tuple:
    """What the app sees of a request: its environ (the body read out), and keep-alive."""
    environ, keep_alive = request
    seen = {key: value for key, value in environ.items() if key != "wsgi.input"}
    seen["body"] = environ["wsgi.input"].getvalue()
    return seen, keep_alive


def receive(data: bytes, cuts: list[int] = ()) -> tuple[list[tuple], Rejection | None, Connection]:
    """Feed ``data`` to a new connection in pieces cut at ``cuts``: the requests, the refusal, the connection."""
    conn = connection()
    requests = []
    start = 0
    for end in sorted(set(cuts)) + [len(data)]:
        requests += [shape(request) for request in conn.receive(data[start:end])]
        start = end
        if conn.must_close:
            break
    return requests, conn.rejection, conn


# ----------------------------------------------------------------- shapes


def test_a_post_with_a_query_and_headers():
    [(environ, keep_alive)], rejection, _ = receive(
        b"POST /pay%20ments?a=1&b=%20 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Seen: 1\r\nX-Seen: 2\r\nX_Spoofed: 1\r\nContent-Length: 2\r\n\r\n{}")
    assert rejection is None and keep_alive
    assert environ == {
        "wsgi.version": (1, 0), "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/pay ments", "QUERY_STRING": "a=1&b=%20", "HTTP_HOST": "x", "CONTENT_TYPE": "application/json",
        "HTTP_X_SEEN": "1,2", "CONTENT_LENGTH": "2", "body": b"{}",
    }  # X_Spoofed is dropped: it cannot pose as X-Spoofed


@pytest.mark.parametrize("data, expected", [
    (b"GET / HTTP/1.1\r\n\r\n", {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "body": b""}),
    (b"GET /a?b HTTP/1.0\r\n\r\n", {"SERVER_PROTOCOL": "HTTP/1.0", "PATH_INFO": "/a", "QUERY_STRING": "b"}),
    (b"GET http://h:1/p/q?z=1 HTTP/1.1\r\n\r\n", {"PATH_INFO": "/p/q", "QUERY_STRING": "z=1"}),
    (b"GET http://h HTTP/1.1\r\n\r\n", {"PATH_INFO": "/", "QUERY_STRING": ""}),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", {"REQUEST_METHOD": "OPTIONS", "PATH_INFO": "*"}),
    (b"GET /x#frag HTTP/1.1\r\n\r\n", {"PATH_INFO": "/x"}),
    (b"GET /s?q=1#frag HTTP/1.1\r\n\r\n", {"QUERY_STRING": "q=1"}),
    (b"PURGE /x HTTP/1.1\r\n\r\n", {"REQUEST_METHOD": "PURGE"}),
    (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
     {"CONTENT_LENGTH": "5", "body": b"abcde", "HTTP_TRANSFER_ENCODING": "chunked"}),
    (b"POST /p HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", {"body": b"a"}),
    (b"POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n", {"CONTENT_LENGTH": "0", "body": b""}),
    (b"POST /p HTTP/1.1\r\ncontent-length: 3\r\nCONTENT-TYPE: text/plain\r\n\r\nabc",
     {"CONTENT_LENGTH": "3", "CONTENT_TYPE": "text/plain", "body": b"abc"}),
    (b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Spaces:   v\r\n\r\n", {"HTTP_X_EMPTY": "", "HTTP_X_SPACES": "v"}),
    (b"GET / HTTP/1.1\r\nX-Latin: caf\xe9\r\n\r\n", {"HTTP_X_LATIN": "caf\xe9"}),
])
def test_request_shapes(data, expected):
    [(environ, _)], rejection, _ = receive(data)
    assert rejection is None
    assert {key: environ.get(key) for key in expected} == expected


@pytest.mark.parametrize("data, keep_alive", [
    (b"GET / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive_is_as_the_request_asks(data, keep_alive):
    [(_, wanted)], _, _ = receive(data)
    assert wanted is keep_alive


def test_pipelined_requests_come_out_in_order():
    requests, _, _ = receive(b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /c HTTP/1.0\r\n\r\n")
    assert [(e["PATH_INFO"], e["body"], k) for e, k in requests] == [("/a", b"", True), ("/b", b"x", True),
                                                                   ("/c", b"", False)]


def test_a_request_is_complete_only_at_its_last_byte():
    conn = connection()
    data = b"POST /payments?x=1 HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"
    for i in range(len(data) - 1):
        assert conn.receive(data[i:i + 1]) == []
        assert conn.in_message
    [request] = conn.receive(data[-1:])
    assert not conn.in_message
    assert shape(request)[0]["body"] == b"abcd"


def test_expect_100_continue_is_due_once_the_head_is_in_and_not_the_body():
    conn = connection()
    assert conn.receive(b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n") == []
    assert conn.expects_continue
    assert conn.send_continue() == CONTINUE
    assert not conn.expects_continue
    [request] = conn.receive(b"{}")
    assert shape(request)[0]["body"] == b"{}"


@pytest.mark.parametrize("data", [
    b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",  # the body came with it
    b"POST /p HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",  # 1.0 knows no 100
])
def test_no_continue_is_due(data):
    _, _, conn = receive(data)
    assert not conn.expects_continue


# --------------------------------------------------------------- refusals

SMUGGLING = [
    b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST / HTTP/1.1\r\nContent-Length: 0, 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: +0\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length : 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\nHost: t\nContent-Length: 0\n\n",  # bare LF
    b"POST / HTTP/1.1\r\nHost: t\nContent-Length: 0\r\n\r\n",  # one bare LF
    b"GET / HTTP/1.1\r\nX: a\r\n\n",  # bare LF ending the head
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",  # bare LF in a chunk
    b"POST / HTTP/1.1\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",  # obs-fold
    b"POST / HTTP/1.1\r\nContent-Length:\r\n 0\r\n\r\n",  # obs-fold of a length
    b"GET / HTTP/1.1\rX: a\r\n\r\n",  # a bare CR
]


@pytest.mark.parametrize("data", SMUGGLING)
def test_ambiguous_framing_is_refused(data):
    requests, rejection, conn = receive(data)
    assert (requests, rejection.status) == ([], 400)
    assert conn.must_close


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),  # HTTP/0.9
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"GET / HTTP/1.2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX Y: a\r\n\r\n", 400),
    (b"POST /p HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"POST /p HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),  # beyond 64 bits: llhttp's
    (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY + 1) + b"a" * (MAX_BODY + 1), 413),
    (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + b"a" * 0x800 + b"\r\n" + b"800\r\n" + b"a" * 0x800 + b"\r\n" + b"1\r\na\r\n", 413),
    (b"GET /" + b"a" * (4094 - 13) + b" HTTP/1.1\r\n\r\n", 414),  # a request line of 4095 bytes
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * (8190 - 6) + b"\r\n\r\n", 431),  # a field of 8191 bytes
    (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n", 431),
])
def test_refusals(data, status):
    _, rejection, conn = receive(data)
    assert rejection.status == status
    assert conn.must_close


@pytest.mark.parametrize("data", [
    b"GET /" + b"a" * (4094 - 14) + b" HTTP/1.1\r\n\r\n",  # a request line of 4094 bytes
    b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n",
    b"GET / HTTP/1.1\r\nX-Big: " + b"v" * (8190 - 7) + b"\r\n\r\n",  # a field of 8190 bytes
    b"POST /p HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % MAX_BODY + b"a" * MAX_BODY,
])
def test_at_the_limits_a_request_is_served(data):
    requests, rejection, _ = receive(data)
    assert rejection is None and len(requests) == 1


def test_a_header_field_still_arriving_is_refused_before_it_ends():
    conn = connection()
    conn.receive(b"GET / HTTP/1.1\r\nX-Big: ")
    for _ in range(16):
        conn.receive(b"v" * 1024)
        if conn.rejection:
            break
    assert conn.rejection.status == 431
    assert conn.must_close


def test_a_long_target_still_arriving_is_refused_before_it_ends():
    conn = connection()
    conn.receive(b"GET /")
    while conn.rejection is None:
        conn.receive(b"a" * 100)
    assert conn.rejection.status == 414


def test_requests_before_a_refused_one_are_still_returned():
    requests, rejection, _ = receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nX: a\x00\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
    assert [e["PATH_INFO"] for e, _ in requests] == ["/a"]
    assert rejection.status == 400


def test_an_upgrade_request_is_answered_and_then_the_connection_is_done():
    requests, rejection, conn = receive(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0")
    assert len(requests) == 1 and rejection is None
    assert conn.must_close
    assert conn.receive(b"GET / HTTP/1.1\r\n\r\n") == []


def test_a_rejection_is_a_json_error_that_closes():
    answer = Rejection(431, "too many header fields").to_bytes()
    assert answer == (b'HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n'
                      b'Content-Length: 34\r\nConnection: close\r\n\r\n{"error":"too many header fields"}')


# ---------------------------------------------------------------- answers


def test_an_answer_gets_a_length_and_a_date_and_keeps_the_connection():
    conn = connection()
    [(environ, _)] = conn.receive(b"GET / HTTP/1.1\r\n\r\n")
    answer = conn.respond(environ, "200 OK", [("Content-Type", "application/json")], b"{}", keep_alive=True)
    assert answer == (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                      b"Date: " + DATE.encode() + b"\r\n\r\n{}")
    assert not conn.must_close


def test_an_answer_without_keep_alive_closes():
    conn = connection()
    [(environ, _)] = conn.receive(b"GET / HTTP/1.1\r\n\r\n")
    answer = conn.respond(environ, "202 Accepted", [("Content-Length", "0")], b"", keep_alive=False)
    assert answer.endswith(b"Content-Length: 0\r\nDate: " + DATE.encode() + b"\r\nConnection: close\r\n\r\n")
    assert conn.must_close
    assert conn.receive(b"GET / HTTP/1.1\r\n\r\n") == []


@pytest.mark.parametrize("method, status", [(b"HEAD", "200 OK"), (b"GET", "204 No Content"), (b"GET", "304 Not Modified")])
def test_answers_that_carry_no_body(method, status):
    conn = connection()
    [(environ, _)] = conn.receive(method + b" / HTTP/1.1\r\n\r\n")
    answer = conn.respond(environ, status, [], b"body", keep_alive=True)
    assert not answer.endswith(b"body")


def test_a_header_value_with_a_line_break_is_never_written():
    conn = connection()
    [(environ, _)] = conn.receive(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ValueError):
        conn.respond(environ, "200 OK", [("X", "a\r\nSet-Cookie: b")], b"", keep_alive=True)


# ------------------------------------------------------------- properties

tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ,;=/", max_size=30).map(str.strip)


@st.composite
def requests(draw) -> bytes:
    """One well-formed request: any method, target, headers, a body by length or chunked, 1.0 or 1.1."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS"]))
    target = b"/" + draw(st.text(alphabet="abc/%20?=&", max_size=20)).encode()
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    headers = [(b"X-" + draw(tokens).encode(), draw(values).encode()) for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        headers.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    body = draw(st.binary(max_size=40))
    if version == b"HTTP/1.1" and body and draw(st.booleans()):
        cut = draw(st.integers(0, len(body)))
        chunks = [part for part in (body[:cut], body[cut:]) if part]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in chunks) + b"0\r\n\r\n"
        headers.append((b"Transfer-Encoding", b"chunked"))
    else:
        framed = body
        if body or draw(st.booleans()):
            headers.append((b"Content-Length", b"%d" % len(body)))
    head = b"%s %s %s\r\n" % (method, target, version) + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    return head + b"\r\n" + framed


hostile_tails = st.one_of(
    st.just(b""),
    st.binary(max_size=60),
    st.sampled_from(SMUGGLING),
    st.just(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 20_000 + b"\r\n\r\n"),
    st.just(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n"),
)


@st.composite
def streams(draw) -> tuple[bytes, list[int]]:
    data = b"".join(draw(st.lists(requests(), max_size=4))) + draw(hostile_tails)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    return data, cuts


@given(streams())
def test_any_split_of_a_stream_gives_the_same_requests_and_refusal(stream):
    data, cuts = stream
    assert receive(data, cuts)[:2] == receive(data)[:2]


@given(st.lists(requests(), min_size=1, max_size=6))
def test_pipelined_requests_are_answered_in_order(pipelined):
    conn = connection()
    received = conn.receive(b"".join(pipelined))
    assert conn.rejection is None
    out = b""
    answered = []
    for environ, keep_alive in received:  # as the transport does: answer until one closes
        answered.append(b"" if environ["REQUEST_METHOD"] == "HEAD" else environ["PATH_INFO"].encode("latin-1"))
        out += conn.respond(environ, "200 OK", [("Content-Type", "text/plain")],
                            environ["PATH_INFO"].encode("latin-1"), keep_alive)
        if not keep_alive:
            break
    assert len(answered) == len(received) or conn.must_close
    assert [body for body, _ in read_answers(out)] == answered  # a HEAD's answer has no body
    assert [closes for _, closes in read_answers(out)] == [False] * (len(answered) - 1) + [conn.must_close]


def read_answers(stream: bytes) -> list[tuple[bytes, bool]]:
    """Each answer's body and whether it closes, parsed by llhttp's response parser."""
    answers: list[tuple[bytes, bool]] = []

    class Reader:
        def on_message_begin(self):
            self.body, self.closes = b"", False

        def on_header(self, name, value):
            if name.lower() == b"connection":
                self.closes = value == b"close"

        def on_body(self, body):
            self.body += body

        def on_message_complete(self):
            answers.append((self.body, self.closes))

    parser = httptools.HttpResponseParser(Reader())
    parser.feed_data(stream)
    return answers


@given(st.one_of(st.binary(max_size=200), streams().map(lambda stream: stream[0])), st.binary(max_size=40))
def test_every_refusal_closes_and_the_connection_takes_nothing_more(data, more):
    conn = connection()
    conn.receive(data)  # never raises, whatever the bytes
    if conn.rejection is not None:
        assert conn.must_close
        assert conn.rejection.status in (400, 413, 414, 431)
        assert b"\r\nConnection: close\r\n" in conn.rejection.to_bytes()
        assert conn.receive(more + b"GET / HTTP/1.1\r\n\r\n") == []
