"""An MCP server built with the official Python SDK (PyPI `mcp`), for the
gateway's MCP tests: streamable HTTP on a free loopback port, printed as
`listening on PORT`.

Tools: `echo` (answers its text), `broken` (always fails: the SDK answers a
result with `isError: true`), `search` (answers a small list).

Counting tools, each answering how many times it ran (or, for the flaky
ones, how many calls of it reached the server): `lookup` (read-only),
`remove` (destructive), `failing_read` (read-only, always `isError`),
`plain` (no annotations), `flaky_lookup` (read-only) and `flaky_remove`
(destructive): the first call of each flaky tool is answered HTTP 503
before the SDK sees it. `huge` (read-only) answers 300 long lines.

    python server.py [--json]    # --json: JSON replies instead of event streams
"""

import collections
import json
import socket
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("palisade-test")

# Runs of each counting tool, and calls of each tool that reached the server.
RUNS = collections.Counter()
ARRIVALS = collections.Counter()
READ_ONLY = ToolAnnotations(readOnlyHint=True)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False)


@server.tool()
def echo(text: str) -> str:
    """Answers its text."""
    return text


@server.tool()
def broken() -> str:
    """Always fails."""
    raise ToolError("the broken tool is broken")


@server.tool()
def search(q: str) -> list[str]:
    """Answers three hits."""
    return [f"{q}-1", f"{q}-2", f"{q}-3"]


@server.tool(annotations=READ_ONLY)
def lookup(key: str) -> str:
    """Reads a key (read-only); says how many times it ran."""
    RUNS["lookup"] += 1
    return f"{key}: run {RUNS['lookup']}"


@server.tool(annotations=DESTRUCTIVE)
def remove(key: str) -> str:
    """Removes a key (destructive); says how many times it ran."""
    RUNS["remove"] += 1
    return f"removed {key}: run {RUNS['remove']}"


@server.tool(annotations=READ_ONLY)
def failing_read(key: str) -> str:
    """A read-only tool that always fails, saying how many times it ran."""
    RUNS["failing_read"] += 1
    raise ToolError(f"failing_read failed: run {RUNS['failing_read']}")


@server.tool()
def plain(key: str) -> str:
    """No annotations; says how many times it ran."""
    RUNS["plain"] += 1
    return f"{key}: run {RUNS['plain']}"


@server.tool(annotations=READ_ONLY)
def flaky_lookup(key: str) -> str:
    """Read-only; its first call is answered 503 by the server."""
    return f"{key}: arrival {ARRIVALS['flaky_lookup']}"


@server.tool(annotations=DESTRUCTIVE)
def flaky_remove(key: str) -> str:
    """Destructive; its first call is answered 503 by the server."""
    return f"removed {key}: arrival {ARRIVALS['flaky_remove']}"


@server.tool(annotations=READ_ONLY)
def huge(key: str) -> list[str]:
    """Read-only, and far too large: 300 long lines."""
    RUNS["huge"] += 1
    return [f"run {RUNS['huge']} {key} item {i}: " + "lorem ipsum " * 20 for i in range(300)]


class FailFirst:
    """ASGI middleware: counts the calls of each tool that reach the server,
    and answers the first call of each flaky tool with HTTP 503."""

    FLAKY = {"flaky_lookup", "flaky_remove"}

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        tool = None
        try:
            request = json.loads(body)
            if isinstance(request, dict) and request.get("method") == "tools/call":
                tool = request["params"]["name"]
        except (ValueError, KeyError, TypeError):
            pass
        if tool is not None:
            ARRIVALS[tool] += 1
        if tool in self.FLAKY and ARRIVALS[tool] == 1:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"try again"})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def main() -> None:
    json_response = "--json" in sys.argv
    app = FailFirst(server.streamable_http_app(json_response=json_response))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    print(f"listening on {port}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
