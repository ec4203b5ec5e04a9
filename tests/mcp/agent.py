"""An agent that uses Glassbox through the official MCP Python SDK (PyPI `mcp`).

Run by the end-to-end tests (tests/e2e/mcp_sdk.rs) against a real Glassbox with
a real runner: it connects over streamable HTTP or over stdio (launching
`glassbox mcp`), with the SDK's default negotiation (`auto`: `server/discover`,
falling back to `initialize`) or its `legacy` initialize mode, runs the
scenario, checks what it can see from the client side, and prints one JSON
report line that the Rust test checks against the ledger.

Usage:
  agent.py scenario --transport http --url URL --token TOKEN [--mode auto|legacy]
  agent.py scenario --transport stdio --command BIN --url API --token TOKEN [--mode ...]
  agent.py refused  --transport http|stdio ... (a bad or missing token)
  agent.py workflow --transport http --url URL --token TOKEN --approver-token TOKEN
  agent.py program  (prints the Python program the scenario runs)
"""

import argparse
import asyncio
import base64
import json
import sys
import uuid

import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

EXPECTED_TOOLS = {
    "run_code",
    "submit_job",
    "get_job",
    "cancel_job",
    "list_artifacts",
    "read_artifact",
    "search_audit",
    "verify_ledger",
    "replay",
    "create_session",
    "session_exec",
    "session_write_file",
    "session_read_file",
    "session_list_files",
    "close_session",
    "define_workflow",
    "run_workflow",
    "get_workflow_run",
    "approve_step",
    "cancel_workflow_run",
    "expose_port",
}

# Writes a text and a binary artifact; prints its stdin back.
PYTHON = """
import os, sys
os.makedirs('/workspace/out', exist_ok=True)
open('/workspace/out/report.txt', 'w').write('rows=3\\n')
open('/workspace/out/blob.bin', 'wb').write(bytes(range(256)))
print('py-ok', sys.stdin.read().strip())
"""
NODE = "console.log('node-ok', process.versions.node.split('.')[0] > 0)"


class Failure(Exception):
    pass


def step(what):
    print(f"agent: {what}", file=sys.stderr, flush=True)


def check(cond, what):
    if not cond:
        raise Failure(what)


def connect(args, mode, token):
    if args.transport == "http":
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = streamable_http_client(args.url, http_client=create_mcp_http_client(headers=headers))
        return Client(transport, mode=mode, raise_exceptions=True)
    env = {"GLASSBOX_API_URL": args.url, "PATH": "/usr/bin:/bin"}
    if token:
        env["GLASSBOX_TOKEN"] = token
    else:
        # No token and no signing key to mint one: `glassbox mcp` must refuse.
        env["GLASSBOX_TOKEN"] = "not-a-token"
    params = StdioServerParameters(command=args.command, args=["mcp"], env=env)
    return Client(params, mode=mode, raise_exceptions=True)


def text_of(result):
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(client, name, arguments):
    result = await client.call_tool(name, arguments)
    return result, text_of(result)


async def scenario(args):
    report = {"transport": args.transport, "mode": args.mode}
    async with connect(args, args.mode, args.token) as client:
        report["protocol_version"] = client.protocol_version
        report["server"] = client.server_info.name if client.server_info else None

        tools = (await client.list_tools()).tools
        names = {t.name for t in tools}
        check(EXPECTED_TOOLS <= names, f"tools missing: {EXPECTED_TOOLS - names}")
        run_code = next(t for t in tools if t.name == "run_code")
        props = run_code.input_schema.get("properties", {})
        for member in ["language", "code", "stdin", "files", "dependencies", "secrets", "limits", "idempotency_key"]:
            check(member in props, f"run_code schema lacks {member}: {sorted(props)}")
        check(all(t.description for t in tools), "a tool without a description")
        check(all(t.output_schema for t in tools), f"tools without an outputSchema: {[t.name for t in tools if not t.output_schema]}")
        report["tools"] = sorted(names)

        step("Python")
        # Python, with an idempotency key; the retry must not run it again.
        key = f"agent-{uuid.uuid4()}"
        py_args = {"language": "python", "code": PYTHON, "stdin": "hello", "idempotency_key": key}
        result, text = await call(client, "run_code", py_args)
        check(not result.is_error, f"run_code python failed: {text}")
        py = json.loads(text)
        check(result.structured_content == py, f"structuredContent differs from the text: {result}")
        check(py["status"] == "completed" and py["exit_code"] == 0, f"python job: {py}")
        check(py["stdout"].strip() == "py-ok hello", f"python stdout: {py['stdout']!r}")
        check(sorted(py["artifacts"]) == ["blob.bin", "report.txt"], f"artifacts: {py['artifacts']}")
        check(isinstance(py["ledger_position"], int) and py["ledger_position"] > 0, "ledger_position")
        report["python_job"] = py["job_id"]
        result, text = await call(client, "run_code", py_args)
        check(not result.is_error, f"run_code retry failed: {text}")
        check(json.loads(text)["job_id"] == py["job_id"], "a retry with the same key ran a new job")

        step("Node.")
        # Node.
        result, text = await call(client, "run_code", {"language": "node", "code": NODE})
        check(not result.is_error, f"run_code node failed: {text}")
        node = json.loads(text)
        check(node["status"] == "completed" and node["stdout"].strip() == "node-ok true", f"node job: {node}")
        report["node_job"] = node["job_id"]

        step("Artifacts")
        # Artifacts: listed with URIs; text inline; binary as an embedded resource.
        result, text = await call(client, "list_artifacts", {"job_id": py["job_id"]})
        check(not result.is_error, f"list_artifacts: {text}")
        listed = {a["path"]: a for a in json.loads(text)["artifacts"]}
        check(listed["blob.bin"]["size_bytes"] == 256, f"blob size: {listed}")
        result, text = await call(client, "read_artifact", {"job_id": py["job_id"], "path": "report.txt"})
        check(not result.is_error and text == "rows=3\n", f"text artifact: {result}")
        result = await client.call_tool("read_artifact", {"job_id": py["job_id"], "path": "blob.bin"})
        check(not result.is_error, f"binary artifact: {result}")
        embedded = [c for c in result.content if isinstance(c, types.EmbeddedResource)]
        check(len(embedded) == 1, f"binary artifact is not an embedded resource: {result.content}")
        blob = embedded[0].resource
        check(isinstance(blob, types.BlobResourceContents), f"not a blob: {blob}")
        check(base64.b64decode(blob.blob) == bytes(range(256)), "binary artifact bytes differ")
        check(blob.uri == listed["blob.bin"]["uri"], f"blob uri {blob.uri}")

        step("The same things as resources")
        # The same things as resources, by URI.
        templates = (await client.list_resource_templates()).resource_templates
        check(
            {t.uri_template for t in templates}
            == {
                "glassbox://jobs/{job_id}",
                "glassbox://jobs/{job_id}/artifacts/{+path}",
                "glassbox://sessions/{session_id}",
                "glassbox://sessions/{session_id}/files/{+path}",
            },
            f"templates: {templates}",
        )
        listed_jobs = {r.uri for r in (await client.list_resources()).resources}
        check(f"glassbox://jobs/{py['job_id']}" in listed_jobs, f"resources/list lacks the job: {listed_jobs}")
        job = (await client.read_resource(f"glassbox://jobs/{py['job_id']}")).contents[0]
        check(json.loads(job.text)["status"] == "completed", f"job resource: {job}")
        art = (await client.read_resource(listed["blob.bin"]["uri"])).contents[0]
        check(base64.b64decode(art.blob) == bytes(range(256)), "artifact resource bytes differ")
        art = (await client.read_resource(listed["report.txt"]["uri"])).contents[0]
        check(art.text == "rows=3\n", f"text artifact resource: {art}")
        try:
            await client.read_resource("glassbox://jobs/00000000-0000-0000-0000-000000000000")
        except Exception as e:  # the SDK raises the JSON-RPC error
            check("does not exist" in str(e), f"missing job error: {e}")
        else:
            # Outside the try: a Failure here must not be caught as "the error".
            raise Failure("reading a job that does not exist succeeded")

        step("A policy denial")
        # A policy denial (wall time over the tenant's maximum) is a tool error.
        result, text = await call(
            client,
            "run_code",
            {"language": "python", "code": "print('never')", "limits": {"wall_time_ms": 3600000}},
        )
        check(result.is_error, f"an over-limit job was not refused: {text}")
        check("rejected by policy" in text, f"denial message: {text}")
        report["denial"] = text

        step("Bad input is a tool error")
        # Bad input is a tool error too, and the session goes on.
        result, text = await call(
            client, "run_code", {"language": "python", "code": "1", "files": [{"path": "../x", "content": ""}]}
        )
        check(result.is_error and "files" in text, f"bad path: {text}")

        step("Oversized input")
        # Oversized input is refused with a message, and the session goes on.
        try:
            result, text = await call(client, "run_code", {"language": "python", "code": "#" * args.oversize})
            check(result.is_error, "an oversized call was accepted")
            report["oversized"] = text
        except Failure:
            raise
        except Exception as e:
            report["oversized"] = str(e)
        check("payload_too_large" in report["oversized"], f"oversized: {report['oversized']}")
        result, _ = await call(client, "get_job", {"job_id": node["job_id"]})
        check(not result.is_error, "the session broke after a refusal")
    print(json.dumps(report), flush=True)


async def session(args):
    """An agent's interactive loop: open a session, keep state across calls,
    move files in and out, close it."""
    report = {"transport": args.transport}
    async with connect(args, args.mode, args.token) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        props = tools["create_session"].input_schema.get("properties", {})
        for member in ["language", "env", "dependencies", "secrets", "limits", "idempotency_key"]:
            check(member in props, f"create_session schema lacks {member}: {sorted(props)}")

        step("create_session")
        result, text = await call(client, "create_session", {"language": "python", "limits": {"idle_timeout_secs": 120}})
        check(not result.is_error, f"create_session failed: {text}")
        opened = result.structured_content or json.loads(text)
        sid = opened["session"]["session_id"]
        check(opened["session"]["status"] == "active", f"session: {opened}")
        report["session"] = sid

        step("state between execs")
        result, text = await call(client, "session_exec", {"session_id": sid, "code": "import math\nr = 2"})
        check(not result.is_error, f"exec 1: {text}")
        result, text = await call(client, "session_exec", {"session_id": sid, "code": "round(math.pi * r * r, 2)"})
        out = result.structured_content or json.loads(text)
        check(out["outcome"] == "succeeded" and out["stdout"]["content"] == "12.57\n", f"exec 2: {out}")
        check(out["exec"] == 2, f"exec number: {out}")

        step("files")
        result, text = await call(
            client, "session_write_file", {"session_id": sid, "path": "in/data.txt", "content": "a\nb\nc\n"}
        )
        check(not result.is_error, f"write: {text}")
        result, text = await call(
            client, "session_exec", {"session_id": sid, "command": "wc -l < in/data.txt > count.txt"}
        )
        check(not result.is_error, f"command: {text}")
        result, text = await call(client, "session_read_file", {"session_id": sid, "path": "count.txt"})
        check(not result.is_error and text.strip() == "3", f"read: {text!r}")
        check(result.structured_content["content"].strip() == "3", f"structured read: {result}")
        result, text = await call(client, "session_list_files", {"session_id": sid, "path": "in"})
        listing = result.structured_content or json.loads(text)
        check([e["name"] for e in listing["entries"]] == ["data.txt"], f"list: {listing}")

        step("the session and its files as resources")
        res = (await client.read_resource(f"glassbox://sessions/{sid}")).contents[0]
        check(json.loads(res.text)["execs"] == 3, f"session resource: {res}")
        res = (await client.read_resource(f"glassbox://sessions/{sid}/files/in/data.txt")).contents[0]
        check(res.text == "a\nb\nc\n", f"file resource: {res}")
        for name in ["create_session", "session_exec", "session_write_file", "session_read_file",
                     "session_list_files", "close_session", "expose_port"]:
            check(tools[name].output_schema, f"{name} declares no outputSchema")

        step("expose a port (service mode)")
        result, text = await call(client, "expose_port", {"session_id": sid, "port": 8000, "roles": ["approver"]})
        check(not result.is_error, f"expose: {text}")
        check(result.structured_content["path"] == f"/v1/sessions/{sid}/ports/8000/", f"exposed: {result}")
        result, text = await call(client, "expose_port", {"session_id": sid, "port": 0})
        check(result.is_error, f"port 0: {text}")

        step("close")
        result, text = await call(client, "close_session", {"session_id": sid})
        check(not result.is_error, f"close: {text}")
        result, text = await call(client, "session_exec", {"session_id": sid, "code": "print(1)"})
        check(result.is_error and "conflict" in text, f"exec after close: {text}")
    print(json.dumps(report), flush=True)


# A two-step workflow: `build` writes an artifact, `publish` (gated: it asks for
# approval) reads it and prints it.
WORKFLOW = {
    "name": "mcp-report",
    "steps": [
        {
            "name": "build",
            "job": {
                "language": "python",
                "code": "import os\nos.makedirs('/workspace/out', exist_ok=True)\n"
                        "open('/workspace/out/n.txt', 'w').write(str(6 * 7))\nprint('built')",
            },
        },
        {
            "name": "publish",
            "needs": ["build"],
            "approval": True,
            "inputs": [{"from": "build:out/n.txt", "path": "in/n.txt"}],
            "job": {"language": "python", "code": "print('published', open('in/n.txt').read())"},
        },
    ],
}


async def workflow(args):
    """An agent runs a workflow to completion with a human's approval between
    its steps: the submitter's own approval is refused, another's is granted."""
    report = {"transport": args.transport}
    async with connect(args, args.mode, args.token) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        for name in ["define_workflow", "run_workflow", "get_workflow_run", "approve_step", "cancel_workflow_run"]:
            check(name in tools and tools[name].output_schema, f"{name} missing or without outputSchema")

        step("define_workflow")
        result, text = await call(client, "define_workflow", {"definition": WORKFLOW})
        check(not result.is_error, f"define_workflow failed: {text}")
        defined = result.structured_content or json.loads(text)
        check(defined["digest"].startswith("sha256:") and defined["steps"] == ["build", "publish"], f"defined: {defined}")
        report["digest"] = defined["digest"]

        step("a cycle is refused")
        bad = {"name": "loop", "steps": [
            {"name": "a", "needs": ["b"], "job": {"language": "bash", "code": "true"}},
            {"name": "b", "needs": ["a"], "job": {"language": "bash", "code": "true"}}]}
        result, text = await call(client, "define_workflow", {"definition": bad})
        check(result.is_error and "cycle" in text, f"cycle: {text}")

        step("run_workflow")
        result, text = await call(client, "run_workflow", {"name": "mcp-report", "idempotency_key": str(uuid.uuid4())})
        check(not result.is_error, f"run_workflow failed: {text}")
        started = result.structured_content or json.loads(text)
        run_id = started["run_id"]
        check(started["gated"] == ["publish"], f"gated: {started}")
        report["run_id"] = run_id

        step("wait for the approval request")
        for _ in range(12):
            result, text = await call(client, "get_workflow_run", {"run_id": run_id, "wait_seconds": 10})
            run = result.structured_content or json.loads(text)
            steps = {s["name"]: s for s in run["steps"]}
            if steps["publish"]["status"] == "awaiting_approval":
                break
        check(steps["build"]["status"] == "succeeded", f"build: {run}")
        check(steps["publish"]["status"] == "awaiting_approval", f"publish: {run}")

        step("the submitter may not approve")
        result, text = await call(client, "approve_step", {"run_id": run_id, "step": "publish"})
        check(result.is_error and "submitted the run" in text, f"self-approval: {text}")
        report["self_approval"] = text

    async with connect(args, args.mode, args.approver_token) as approver:
        step("another approver grants")
        result, text = await call(approver, "approve_step", {"run_id": run_id, "step": "publish", "reason": "looks right"})
        check(not result.is_error, f"approval: {text}")
        check((result.structured_content or json.loads(text))["outcome"] == "granted", f"approval: {text}")

    async with connect(args, args.mode, args.token) as client:
        step("the run completes")
        for _ in range(12):
            result, text = await call(client, "get_workflow_run", {"run_id": run_id, "wait_seconds": 10})
            run = result.structured_content or json.loads(text)
            if run["status"] != "running":
                break
        check(run["status"] == "succeeded", f"run: {run}")
        publish = {s["name"]: s for s in run["steps"]}["publish"]
        check(publish["answered_by"] and len(publish["jobs"]) == 1, f"publish: {publish}")
        result, text = await call(client, "get_job", {"job_id": publish["jobs"][0]})
        job = result.structured_content or json.loads(text)
        check(job["stdout"] == "published 42\n", f"publish output: {job}")
        report["jobs"] = [s["jobs"] for s in run["steps"]]
        report["status"] = run["status"]
    print(json.dumps(report), flush=True)


def leaves(e):
    """The exceptions inside (nested) exception groups."""
    inner = getattr(e, "exceptions", None)
    return [x for sub in inner for x in leaves(sub)] if inner else [e]


async def refused(args):
    """A connection without a valid token never gets a session."""
    try:
        async with connect(args, args.mode, args.token) as client:
            await client.list_tools()
    except Exception as e:  # noqa: BLE001 - any refusal, but it must say why
        message = " | ".join(str(x) for x in leaves(e))
        print(json.dumps({"refused": True, "message": message}), flush=True)
        return
    print(json.dumps({"refused": False}), flush=True)


def main():
    if sys.argv[1:] == ["program"]:
        # The Python program the scenario runs, for the REST comparison.
        print(PYTHON, end="")
        return
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["scenario", "refused", "session", "workflow"])
    p.add_argument("--transport", choices=["http", "stdio"], required=True)
    p.add_argument("--url", required=True, help="/mcp URL (http) or API URL (stdio)")
    p.add_argument("--token", default="")
    p.add_argument("--command", help="the glassbox binary (stdio)")
    p.add_argument("--mode", default="auto")
    p.add_argument("--oversize", type=int, default=9 << 20)
    p.add_argument("--approver-token", default="")
    args = p.parse_args()
    try:
        run = {"scenario": scenario, "refused": refused, "session": session, "workflow": workflow}[args.what]
        asyncio.run(run(args))
    except Failure as f:
        print(json.dumps({"failure": str(f)}), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
