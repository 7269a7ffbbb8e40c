"""An agent's MCP session with warden, driven by the official MCP Python SDK (PyPI `mcp`).

Usage: mcp_session.py stdio WARDEN_BIN SERVER_URL TOKEN_FILE SHA
       mcp_session.py http  MCP_URL TOKEN SHA

Runs one session: initialize, list the tools, submit the `pytest` job at SHA, wait for it, read
its failing tests, its log and an artifact; then calls each tool with bad arguments. Prints one
JSON object of what it saw (the Rust test asserts on it) and exits 0, or raises.
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def payload(result):
    """The structured answer of a tool call, and whether it was a tool error."""
    if result.structured_content is not None:
        return result.is_error, result.structured_content
    return result.is_error, json.loads(result.content[0].text)


async def session_run(session, sha):
    seen = {}
    init = await session.initialize()
    seen["server"] = init.server_info.name
    seen["instructions"] = init.instructions or ""
    tools = (await session.list_tools()).tools
    seen["tools"] = [t.name for t in tools]
    seen["submit_description"] = next(t.description for t in tools if t.name == "submit_job")

    err, types = payload(await session.call_tool("list_job_types", {}))
    assert not err, types
    seen["job_types"] = {t["name"]: t["params_schema"] for t in types["job_types"]}

    err, sub = payload(
        await session.call_tool(
            "submit_job", {"job_type": "pytest", "repo": "greet", "sha": sha}
        )
    )
    assert not err, sub
    job_id = sub["job_id"]
    seen["job_id"] = job_id

    err, job = payload(
        await session.call_tool("wait_job", {"job_id": job_id, "timeout_s": 120})
    )
    assert not err, job
    seen["status"] = job["status"]
    seen["finished"] = job["finished"]
    seen["sha"] = job["sha"]

    err, tests = payload(await session.call_tool("job_tests", {"job_id": job_id}))
    assert not err, tests
    seen["tests"] = [(t["name"], t["status"]) for t in tests["tests"]]
    seen["counts"] = tests["counts"]

    err, logs = payload(
        await session.call_tool("job_logs", {"job_id": job_id, "tail_lines": 3})
    )
    assert not err, logs
    seen["log_tail"] = logs["text"]
    seen["log_range"] = [logs["from_offset"], logs["to_offset"], logs["stream_bytes"]]

    err, listing = payload(await session.call_tool("list_artifacts", {"job_id": job_id}))
    assert not err, listing
    seen["artifacts"] = sorted(a["path"] for a in listing["artifacts"])

    err, art = payload(
        await session.call_tool(
            "read_artifact", {"job_id": job_id, "path": "junit.xml", "max_bytes": 100000}
        )
    )
    assert not err, art
    seen["junit"] = art["text"]
    err, art = payload(
        await session.call_tool(
            "read_artifact", {"job_id": job_id, "path": "junit.xml", "max_bytes": 10}
        )
    )
    assert not err, art
    seen["junit_cut"] = [art["text"], art["truncated"], art["size"]]

    # Bad arguments: each a tool error with warden's code, the session still up.
    bad = {
        "missing_field": ("submit_job", {}),
        "unknown_field": ("get_job", {"job_id": job_id, "shell": "rm -rf /"}),
        "wrong_type": ("get_job", {"job_id": 5}),
        "bad_id": ("get_job", {"job_id": "nope"}),
        "unknown_job": ("get_job", {"job_id": "0193f1e0-0000-7000-8000-000000000000"}),
        "zero_wait": ("wait_job", {"job_id": job_id, "timeout_s": 0}),
        "bad_stream": ("job_logs", {"job_id": job_id, "stream": "stdin"}),
        "offset_and_tail": ("job_logs", {"job_id": job_id, "offset": 0, "tail_lines": 1}),
        "huge_read": ("job_logs", {"job_id": job_id, "max_bytes": 1 << 30}),
        "bad_status": ("job_tests", {"job_id": job_id, "status": "green"}),
        "escape": ("read_artifact", {"job_id": job_id, "path": "../../../etc/passwd"}),
        "dot_dot": ("read_artifact", {"job_id": job_id, "path": ".."}),
        "sneaky": ("read_artifact", {"job_id": job_id, "path": "sub/../junit.xml"}),
        "binary": ("read_artifact", {"job_id": job_id, "path": "blob.bin"}),
        "missing_file": ("read_artifact", {"job_id": job_id, "path": "nope.txt"}),
        "unknown_type": ("submit_job", {"job_type": "rm-rf"}),
        "bad_param": (
            "submit_job",
            {"job_type": "pytest", "repo": "greet", "sha": sha, "params": {"LD_PRELOAD": "x"}},
        ),
        "bad_sha": ("submit_job", {"job_type": "pytest", "repo": "greet", "sha": "HEAD~1; id"}),
        "finished": ("cancel_job", {"job_id": job_id}),
    }
    seen["bad"] = {}
    for key, (tool, args) in bad.items():
        err, body = payload(await session.call_tool(tool, args))
        assert err, (key, body)
        seen["bad"][key] = body["error"]
    try:
        await session.call_tool("push_to_main", {})
        seen["unknown_tool"] = "answered"
    except MCPError as e:
        seen["unknown_tool"] = str(e)
    err, again = payload(await session.call_tool("get_job", {"job_id": job_id}))
    assert not err, again
    seen["still_up"] = again["job_id"] == job_id
    return seen


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        warden, server, token_file, sha = sys.argv[2:6]
        params = StdioServerParameters(
            command=warden,
            args=["mcp", "--server", server, "--token-file", token_file],
            env={"WARDEN_CONFIG": "/nonexistent/warden-client-config"},
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                seen = await session_run(session, sha)
    else:
        url, token, sha = sys.argv[2:5]
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=180) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    seen = await session_run(session, sha)
    print(json.dumps(seen))


asyncio.run(main())
