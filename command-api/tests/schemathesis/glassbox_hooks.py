"""Schemathesis hooks for the Glassbox command API.

The API document is generated from the types the server parses into, so
JSON Schema states every rule about a single member. A few rules relate
members to each other and JSON Schema cannot state them; the server refuses
those with 400 (the operation descriptions name them). A schema-valid request
that breaks one is not a valid request, so it is left out of the *positive*
cases here - and only it: each predicate below is the server's rule, nothing
wider. Negative cases are untouched.
"""

import schemathesis
from schemathesis import GenerationMode


def _positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _breaks_submit_rules(body):
    """POST /v1/jobs: input paths named once, no path both a file and a
    directory of another, secrets named once."""
    if not isinstance(body, dict):
        return False
    paths = [f.get("path") for f in body.get("files") or [] if isinstance(f, dict)]
    if len(set(paths)) != len(paths):
        return True
    as_files = set(paths)
    for p in paths:
        if isinstance(p, str):
            parts = p.split("/")
            if any("/".join(parts[:i]) in as_files for i in range(1, len(parts))):
                return True
    names = []
    for s in body.get("secrets") or []:
        names.append(s.get("name") if isinstance(s, dict) else s)
    return len(set(map(str, names))) != len(names)


def _breaks_session_rules(body):
    """POST /v1/sessions: secrets named once."""
    if not isinstance(body, dict):
        return False
    names = []
    for s in body.get("secrets") or []:
        names.append(s.get("name") if isinstance(s, dict) else s)
    return len(set(map(str, names))) != len(names)


def _repair_workflow(body):
    """POST /v1/workflows: JSON Schema states each step alone, not how steps
    relate - names unique, `needs` naming other steps without a cycle, inputs
    from an ancestor's artifacts at unused paths (the server's 400s, named in
    the operation's description). A positive case keeps every value it drew
    and gets those relations made true: a repeated step name gets a suffix,
    needs keep only earlier steps (so no cycle), inputs are dropped."""
    if not isinstance(body, dict) or not isinstance(body.get("steps"), list):
        return body
    seen = set()
    for i, step in enumerate(body["steps"]):
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            continue
        name = step["name"]
        if name in seen:
            name = f"{name[:56]}-{i}"
            step["name"] = name
        needs = step.get("needs")
        if isinstance(needs, list):
            step["needs"] = sorted({n for n in needs if n in seen})
        if "inputs" in step:
            step["inputs"] = []
        seen.add(name)
    return body


def _breaks_workflow_rules(body):
    """POST /v1/workflows: each step's job as for POST /v1/jobs."""
    if not isinstance(body, dict):
        return False
    return any(
        _breaks_submit_rules(s.get("job")) for s in body.get("steps") or [] if isinstance(s, dict)
    )


@schemathesis.hook("map_case")
def related_members(context, case):
    if _positive(case) and (case.operation.method.upper(), case.operation.path) == (
        "POST",
        "/v1/workflows",
    ):
        case.body = _repair_workflow(case.body)
    return case


def _ordered(low, high):
    """`low <= high` when both are given."""
    low, high = _int(low), _int(high)
    return low is None or high is None or low <= high


@schemathesis.hook("filter_case")
def cross_member_rules(context, case):
    if not _positive(case):
        return True
    method = case.operation.method.upper()
    path = case.operation.path
    query = case.query or {}
    body = case.body if isinstance(case.body, dict) else {}
    if (method, path) == ("POST", "/v1/jobs"):
        return not _breaks_submit_rules(case.body)
    if (method, path) == ("POST", "/v1/sessions"):
        return not _breaks_session_rules(case.body)
    if (method, path) == ("POST", "/v1/workflows"):
        return not _breaks_workflow_rules(_repair_workflow(case.body))
    if (method, path) == ("POST", "/v1/workflows/{name}/runs"):
        # The run's input files, by the rules of a job's files.
        return not _breaks_submit_rules({"files": body.get("inputs")})
    if (method, path) == ("GET", "/v1/audit/proofs/consistency"):
        return _ordered(query.get("from"), query.get("to"))
    if (method, path) == ("GET", "/v1/audit/proofs/inclusion"):
        return _ordered(query.get("position"), query.get("size"))
    if (method, path) == ("POST", "/v1/audit/verify"):
        return _ordered(body.get("from"), body.get("to"))
    return True
