"""The official OpenAI Python SDK as a client of the gateway.

Usage: client.py CALLS_JSON [CONCURRENCY]

CALLS_JSON is a list of calls, each
  {"base_url": "http://127.0.0.1:8080/v1", "user": "alice", "stream": false,
   "include_usage": true, "max_tokens": 20, "content": "one two three"}
run on CONCURRENCY threads (default 1: in order). Prints one JSON line per
call, in the order given:
  {"ok": true, "content": "...", "usage": {...} | null, "chunks": n,
   "finish_reason": "stop"}
or, when the SDK raises an API error,
  {"ok": false, "error": "RateLimitError", "status": 429, "chunks": n,
   "retry_after": "...", "ratelimit": "...", "ratelimit_policy": "...",
   "content_type": "...", "body": {...} | null}
where `chunks` counts the stream chunks received before the error (0: the
error came before the stream started).
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import openai

_clients = {}


def client_for(base_url):
    # One client per replica; the SDK's own retries are off, so a 429
    # reaches the caller as it was answered.
    if base_url not in _clients:
        _clients[base_url] = openai.OpenAI(
            base_url=base_url, api_key="sk-palisade-test", max_retries=0, timeout=60.0
        )
    return _clients[base_url]


def usage_of(u):
    if u is None:
        return None
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def run(call):
    client = client_for(call["base_url"])
    args = dict(
        model="palisade-demo",
        messages=[{"role": "user", "content": call["content"]}],
        max_tokens=call["max_tokens"],
        extra_headers={"x-user": call["user"]},
    )
    chunks = 0
    try:
        if not call.get("stream"):
            res = client.chat.completions.create(**args)
            assert res.object == "chat.completion", res.object
            return {
                "ok": True,
                "content": res.choices[0].message.content,
                "usage": usage_of(res.usage),
                "chunks": 0,
                "finish_reason": res.choices[0].finish_reason,
            }
        if call.get("include_usage"):
            args["stream_options"] = {"include_usage": True}
        stream = client.chat.completions.create(stream=True, **args)
        text, usage, finish, ids = [], None, None, set()
        for chunk in stream:
            chunks += 1
            assert chunk.object == "chat.completion.chunk", chunk.object
            ids.add(chunk.id)
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
        assert len(ids) == 1, ids
        return {
            "ok": True,
            "content": "".join(text),
            "usage": usage_of(usage),
            "chunks": chunks,
            "finish_reason": finish,
        }
    except openai.APIStatusError as e:
        h = e.response.headers
        return {
            "ok": False,
            "error": type(e).__name__,
            "status": e.status_code,
            "chunks": chunks,
            "retry_after": h.get("retry-after"),
            "ratelimit": h.get("ratelimit"),
            "ratelimit_policy": h.get("ratelimit-policy"),
            "content_type": h.get("content-type"),
            "body": e.body if isinstance(e.body, (dict, list)) else None,
        }


def main():
    calls = json.loads(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    if workers <= 1:
        results = [run(c) for c in calls]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, calls))
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
