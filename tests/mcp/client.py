"""An MCP client built with the official Python SDK (PyPI `mcp`), for the
gateway's MCP tests: connects to URL over streamable HTTP (initialize
handshake, so a session id is used), runs the steps given as JSON, and
prints one JSON line per step.

    python client.py URL '[["list"], ["call", "echo", {"text": "hi"}]]'

A call prints {"tool", "is_error", "text", "items" (content items),
"structured" (structuredContent), "meta" (_meta)} or {"tool", "error"}
when the call itself failed (a JSON-RPC error, an HTTP error).
"""

import asyncio
import json
import sys

from mcp import Client


async def main(url: str, steps: list) -> None:
    async with Client(url, mode="legacy", read_timeout_seconds=30) as client:
        for step in steps:
            if step[0] == "list":
                tools = await client.list_tools()
                print(json.dumps({"tools": sorted(t.name for t in tools.tools)}), flush=True)
            elif step[0] == "call":
                name, args = step[1], step[2]
                try:
                    result = await client.call_tool(name, args)
                except Exception as exc:  # the call failed as a whole
                    print(json.dumps({"tool": name, "error": str(exc)}), flush=True)
                    continue
                text = "".join(getattr(c, "text", "") for c in result.content)
                print(json.dumps({
                    "tool": name,
                    "is_error": bool(result.is_error),
                    "text": text,
                    "items": len(result.content),
                    "structured": result.structured_content,
                    "meta": result.meta,
                }), flush=True)
            else:
                raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
