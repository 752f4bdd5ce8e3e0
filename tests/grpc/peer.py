"""A gRPC peer written with grpcio (not tonic), for tests/gateway_grpc.rs.

    python peer.py serve            -> prints "port N", serves until killed
    python peer.py call HOST:PORT   -> calls each method, prints one JSON line

Methods take and return raw bytes (no protoc needed):
  /demo.Echo/Say     unary: "echo:" + request
  /demo.Echo/Fail    unary: aborts with UNAVAILABLE
  /demo.Echo/Stream  server streaming: 3 messages, then OK with a trailer
  /demo.Echo/Late    server streaming: 2 messages, then UNAVAILABLE (in trailers)
  /demo.Echo/Count   unary: how many times each method was called, as JSON
"""
import json
import sys
import threading
from collections import Counter
from concurrent import futures

import grpc

ident = lambda b: b

CALLS = Counter()
CALLS_LOCK = threading.Lock()


def counted(name, fn):
    def handler(request, context):
        with CALLS_LOCK:
            CALLS[name] += 1
        return fn(request, context)

    return handler


def count(request, context):
    with CALLS_LOCK:
        return json.dumps(CALLS).encode()


def say(request, context):
    return b"echo:" + request


def fail(request, context):
    context.abort(grpc.StatusCode.UNAVAILABLE, "upstream down")


def stream(request, context):
    for i in range(3):
        yield b"part-%d" % i
    context.set_trailing_metadata((("x-parts", "3"),))


def late(request, context):
    yield b"first"
    yield b"second"
    context.abort(grpc.StatusCode.UNAVAILABLE, "broke mid-stream")


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(counted("Say", say), ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(counted("Fail", fail), ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(counted("Stream", stream), ident, ident),
        "Late": grpc.unary_stream_rpc_method_handler(counted("Late", late), ident, ident),
        "Count": grpc.unary_unary_rpc_method_handler(count, ident, ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("port %d" % port, flush=True)
    server.wait_for_termination()


def outcome(fn):
    try:
        return {"ok": fn()}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def call(target):
    channel = grpc.insecure_channel(target)
    say_ = channel.unary_unary("/demo.Echo/Say", ident, ident)
    fail_ = channel.unary_unary("/demo.Echo/Fail", ident, ident)
    stream_ = channel.unary_stream("/demo.Echo/Stream", ident, ident)
    late_ = channel.unary_stream("/demo.Echo/Late", ident, ident)
    count_ = channel.unary_unary("/demo.Echo/Count", ident, ident)

    def streamed():
        call = stream_(b"go", timeout=10)
        parts = [m.decode() for m in call]
        trailers = dict(call.trailing_metadata() or ())
        return {"parts": parts, "x-parts": trailers.get("x-parts")}

    def late_parts():
        got = []
        try:
            for m in late_(b"go", timeout=10):
                got.append(m.decode())
        except grpc.RpcError as e:
            return {"parts": got, "code": e.code().name, "details": e.details()}
        return {"parts": got, "code": "OK"}

    result = {
        "say": outcome(lambda: say_(b"hi", timeout=10).decode()),
        "stream": outcome(streamed),
        "late": outcome(late_parts),
        "fail": outcome(lambda: fail_(b"x", timeout=10).decode()),
        "after_fail": outcome(lambda: say_(b"again", timeout=10).decode()),
    }
    result["calls"] = outcome(lambda: json.loads(count_(b"", timeout=10)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(sys.argv[2])
