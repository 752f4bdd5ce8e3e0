"""An MCP server built with the official Python SDK (PyPI `mcp`), for the
gateway's MCP tests: streamable HTTP on a free loopback port, printed as
`listening on PORT`.

Tools: `echo` (answers its text), `broken` (always fails: the SDK answers a
result with `isError: true`), `search` (answers a small list).

    python server.py [--json]    # --json: JSON replies instead of event streams
"""

import socket
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("palisade-test")


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


def main() -> None:
    json_response = "--json" in sys.argv
    app = server.streamable_http_app(json_response=json_response)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    print(f"listening on {port}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
