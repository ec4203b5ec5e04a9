#!/usr/bin/env python3
"""Independent offline verifier for Glassbox evidence bundles (glassbox-evidence-bundle/1).

Written from docs/evidence-bundle.md and docs/ledger-format.md alone (no Glassbox
code), as an auditor would. Standard library plus `cryptography` (Ed25519).

    python3 verify_bundle.py BUNDLE.tar --key 'NAME+HEXID+BASE64'

Exit 0 and `OK <records> records, tree size <n>, bundle sha256 <hex>` when the
bundle verifies; exit 1 and `FAIL <file>: <reason>` when it does not; exit 2 on a
usage error or an invalid verifier key (message on stderr as `error: ...`).

The checks run in the order of evidence-bundle.md "Verification" (steps 1-20) and
the first failure stops verification. The bundle is read once, front to back, and
its SHA-256 is computed on the way; only (position, leaf hash) is kept per record.

Where the documents leave room, this verifier assumes: the documents do not give reason
texts for framing faults, so the wording after `bundle:` here is made up; the 127-level
nesting limit also applies to the manifest and to proof lines; integers outside the
i64/u64 range count as doubles (as serde_json parses them); `since`/`until` are compared
at full precision and a leap second `:60.f` acts as the next minute's start; the
`filters` check (step 11) runs after the records.jsonl header has been checked; and
records and proofs are checked line by line as read, so an archive that ends inside
records.jsonl is reported after the complete lines before the cut have been checked.
"""
import base64
import hashlib
import json
import re
import sys
from decimal import Decimal
from fractions import Fraction

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# --------------------------------------------------------------------------- constants
FILES = ["checkpoint.txt", "proofs.jsonl", "records.csv", "records.jsonl",
         "records.ocsf.jsonl"]                                            # manifest `files`, byte order
MANIFEST_MEMBERS = ["checkpoint", "exported_at", "exported_by", "files", "filters",
                    "first_position", "format", "last_position", "record_count",
                    "verifier_key_name"]
FORMAT = "glassbox-evidence-bundle/1"
# filter member -> (kind, name used in "outside the filter (<which>)"), in checking order
FILTERS = {"tenant": ("str", "tenant"), "stream": ("str", "stream"),
           "event_type": ("str", "event type"), "actor": ("str", "actor"),
           "correlation_id": ("str", "correlation_id"),
           "from_position": ("pos", "from_position"), "to_position": ("pos", "to_position"),
           "since": ("time", "since"), "until": ("time", "until")}
MAX_SAFE = 2**53 - 1                 # largest integer a record may hold (ledger-format §1)
MAX_DEPTH = 127                      # nesting levels of objects/arrays (ledger-format §1)
CHUNK = 1 << 20
HEX64 = re.compile(r"[0-9a-f]{64}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OCCURRED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                     r"(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})")
# Unicode White_Space (key names may hold none of these; the key text is trimmed of them)
WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
               "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
EM_DASH_SPACE = "\u2014 "
CSV_HEADER = ["position", "occurred_at", "tenant", "stream", "stream_version", "event_type",
              "actor_kind", "actor_id", "actor_app", "actor_agent", "auth_via",
              "correlation_id", "entry_hash"]


class Fail(Exception):
    """A verification failure: reported as `FAIL <file>: <reason>`."""
    def __init__(self, file, reason):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason

def require(ok, file, reason):
    """Fail verification with `<file>: <reason>` unless `ok`."""
    if not ok:
        raise Fail(file, reason)

def is_int(v):
    """A JSON integer (Python's bool is an int subclass; floats never count)."""
    return type(v) is int

def sha256(b):
    return hashlib.sha256(b).digest()

# --------------------------------------------------------------------------- JSON (RFC 8785)
class JObj(dict):
    """A parsed JSON object; `dup` records a repeated member name (never canonical)."""
    dup = False

def _pairs(pairs):
    obj = JObj(pairs)
    obj.dup = len(obj) != len(pairs)
    return obj

def _parse_float(s):
    v = float(s)
    if abs(v) == float("inf"):
        raise ValueError(f"number out of range: {s}")
    return v

def _parse_int(s):
    v = int(s)
    # Like serde_json without arbitrary_precision: integers outside i64/u64 become doubles.
    return v if -2**63 <= v < 2**64 else _parse_float(s)

def _no_constant(s):
    raise ValueError(f"invalid literal {s}")

def _walk(v, depth):
    """Refuse lone surrogates (invalid JSON text) and nesting deeper than MAX_DEPTH."""
    if isinstance(v, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise ValueError("lone surrogate in string escape")
    elif isinstance(v, (list, dict)):
        if depth > MAX_DEPTH:
            raise ValueError(f"more than {MAX_DEPTH} nested levels")
        for k in (v if isinstance(v, dict) else ()):
            _walk(k, depth)
        for x in (v.values() if isinstance(v, dict) else v):
            _walk(x, depth + 1)

def parse_json(b):
    """Parse UTF-8 JSON bytes strictly; raises ValueError with a reason."""
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8: {e.reason} at byte {e.start}") from None
    try:
        v = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int,
                       parse_float=_parse_float, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("recursion limit exceeded") from None
    _walk(v, 1)
    return v

def es_number(x):
    """ECMAScript Number.prototype.toString of a finite double (RFC 8785 §3.2.2.3)."""
    if x == 0:
        return "0"
    if x < 0:
        return "-" + es_number(-x)
    # repr() is the shortest round-tripping form; value = 0.<digits> * 10^n
    _, dig, exp = Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, dig))
    n = exp + len(digits)
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    return digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))

_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}

def _canon_str(s):
    return '"' + "".join(_ESC.get(c) or (f"\\u{ord(c):04x}" if c < " " else c) for c in s) + '"'

def canon(v):
    """RFC 8785 canonical text of a parsed value (ValueError if impossible)."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if is_int(v):
        return str(v) if abs(v) <= MAX_SAFE else es_number(float(v))   # beyond: as a double
    if isinstance(v, float):
        return es_number(v)
    if isinstance(v, str):
        return _canon_str(v)
    if isinstance(v, list):
        return "[" + ",".join(canon(x) for x in v) + "]"
    if isinstance(v, dict):
        if getattr(v, "dup", False):
            raise ValueError("duplicate member name")
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))   # UTF-16 code unit order
        return "{" + ",".join(_canon_str(k) + ":" + canon(v[k]) for k in keys) + "}"
    raise ValueError(f"unexpected value {v!r}")

def canon_bytes(v):
    return canon(v).encode("utf-8")

def is_canonical(b, v):
    try:
        return canon_bytes(v) == b
    except ValueError:
        return False

# --------------------------------------------------------------------------- time
def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, incl. 0000)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468

def valid_date(y, m, d):
    if not 1 <= m <= 12 or d < 1:
        return False
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return d <= [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1]

def rfc3339_micros(s):
    """Exact instant (a Fraction of microseconds since the epoch) of an RFC 3339 date-time,
    any precision and offset. A leap second `:60.f` sorts after every `:59.x` and before
    the next minute, so against (never-leap) record times it acts as the next minute."""
    m = RFC3339.fullmatch(s)
    if not m:
        raise ValueError(f"not an RFC 3339 date-time: {s!r}")
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    frac, off = m.group(7), m.group(8)
    if not valid_date(y, mo, d) or h > 23 or mi > 59 or sec > 60:
        raise ValueError(f"not an RFC 3339 date-time: {s!r}")
    offset = 0
    if off not in ("Z", "z"):
        oh, om = int(off[1:3]), int(off[4:6])
        if oh > 23 or om > 59:
            raise ValueError(f"not an RFC 3339 date-time: {s!r}")
        offset = (oh * 60 + om) * 60 * (1 if off[0] == "+" else -1)
    t = Fraction(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset)
    if sec != 60 and frac:
        t += Fraction(int(frac), 10 ** len(frac))
    return t * 10**6

def occurred_at_micros(s):
    """Microseconds since the epoch of a record's `occurred_at`: exactly
    YYYY-MM-DDTHH:MM:SS.ffffffZ, a valid RFC 3339 time, never a leap second (§1)."""
    try:
        t = rfc3339_micros(s) if OCCURRED_AT.fullmatch(s) else None
    except ValueError:
        t = None
    if t is None:
        raise ValueError("invalid occurred_at: not UTC with microseconds and `Z`")
    if s[17:19] == "60":
        raise ValueError("invalid occurred_at: a leap second (:60) is never written")
    return int(t)

# --------------------------------------------------------------------------- keys and notes
def b64_canonical(s):
    """Decode standard base64 with padding, accepting only the canonical encoding."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == s else None

def parse_verifier_key(text):
    """`<name>+<8 hex id>+<base64(0x01 || pubkey)>` (ledger-format §5 Keys)."""
    parts = text.strip(WHITE_SPACE).split("+", 2)
    if len(parts) < 3:
        raise ValueError("a verifier key is <name>+<hex id>+<base64 key>")
    name, idhex, b64 = parts
    if not name or any(c in WHITE_SPACE for c in name):
        raise ValueError("invalid key name")
    raw = b64_canonical(b64)
    if raw is None or len(raw) != 33 or raw[0] != 0x01:
        raise ValueError("the key is not canonical base64 of 0x01 and a 32-byte Ed25519 key")
    key_id = sha256(name.encode("utf-8") + b"\n\x01" + raw[1:])[:4]
    if idhex != key_id.hex():
        raise ValueError(f"key ID {idhex} does not match the key (expected {key_id.hex()})")
    return name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:])

def open_note(data, key, file):
    """Open a signed note with the verifier key (ledger-format §5); returns the text.
    Raises Fail(file, ...) for bad UTF-8, ValueError(reason) for a note that fails."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Fail(file, "stream did not contain valid UTF-8") from None
    name, key_id, pub = key
    i = s.find("\n\n")
    if i < 0:
        raise ValueError("malformed note: no empty line after the text")
    text, block = s[:i + 1], s[i + 2:]
    if not block or not block.endswith("\n"):
        raise ValueError("malformed note: the signature block is empty or does not end with a newline")
    sigs = []
    for line in block[:-1].split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.startswith(EM_DASH_SPACE) or " " not in line[2:]:
            raise ValueError(f"malformed signature line {line!r}")
        sigs.append(line[2:].split(" ", 1))
    body = text.encode("utf-8")
    for signer, value in sigs:
        raw = b64_canonical(value)
        if signer != name or raw is None or len(raw) != 68 or raw[:4] != key_id:
            continue
        try:
            pub.verify(raw[4:], body)
            return text
        except InvalidSignature:
            continue
    raise ValueError(f"note carries no valid signature by key {name}")

def exactly_one_signature(data, name):
    """Steps 6/9: one signature line by the key's name, ending the file; no CR."""
    if b"\r" in data:
        return False
    block = data[data.find(b"\n\n") + 2:]
    return (block.startswith(f"{EM_DASH_SPACE}{name} ".encode("utf-8"))
            and block.endswith(b"\n") and block.count(b"\n") == 1)

def parse_checkpoint(text):
    """Checkpoint body `<origin>\\n<size>\\n<base64 root>\\n[extensions]` -> (origin, size, root)."""
    if not text.endswith("\n"):
        raise ValueError("checkpoint body is malformed: it does not end with a newline")
    lines = text.split("\n")
    if len(lines) < 4:
        raise ValueError("checkpoint body is malformed: fewer than three lines")
    origin, size, root = lines[:3]
    if not origin:
        raise ValueError("checkpoint body is malformed: empty origin")
    if not re.fullmatch(r"0|[1-9][0-9]*", size) or int(size) >= 2**64:
        raise ValueError(f"checkpoint body is malformed: bad tree size {size!r}")
    raw = b64_canonical(root)
    if raw is None or len(raw) != 32:
        raise ValueError(f"checkpoint body is malformed: bad root {root!r}")
    return origin, int(size), raw

# --------------------------------------------------------------------------- Merkle (RFC 9162)
def node_hash(left, right):
    return sha256(b"\x01" + left + right)

def verify_inclusion(m, n, leaf, proof, root):
    """RFC 9162 §2.1.3.2, exactly as restated in ledger-format §4."""
    if m >= n:
        raise ValueError(f"leaf index {m} is not below the tree size {n}")
    fn, sn, r = m, n - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("the proof is too long")
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the proof is too short")
    if r != root:
        raise ValueError(f"the proof leads to root {r.hex()}, not the signed root")

# --------------------------------------------------------------------------- records
_string = lambda v: isinstance(v, str)                    # noqa: E731 (rule predicates)
_string_or_null = lambda v: v is None or isinstance(v, str)  # noqa: E731
_int_ge_1 = lambda v: is_int(v) and v >= 1                  # noqa: E731
# member -> (test, what it must be), in the order checked (ledger-format §1)
RECORD_RULES = {
    "v": (lambda v: is_int(v) and v == 1, "1"),
    "position": (_int_ge_1, "an integer >= 1"),
    "event_id": (lambda v: _string(v) and UUID.fullmatch(v), "a lowercase hyphenated UUID"),
    "stream": (_string, "a string"), "stream_version": (_int_ge_1, "an integer >= 1"),
    "type": (_string, "a string"), "occurred_at": (_string, "a string"),
    "tenant": (_string, "a string"), "actor": (lambda v: isinstance(v, dict), "an object"),
    "correlation_id": (_string, "a string"), "causation_id": (_string_or_null, "a string or null"),
    "request_id": (_string_or_null, "a string or null"), "data": (lambda v: isinstance(v, dict), "an object"),
    "prev_hash": (lambda v: _string(v) and HEX64.fullmatch(v), "64 lowercase hex digits"),
}
ACTOR_RULES = {
    "kind": (lambda v: v in ("user", "agent", "service", "system"), "user, agent, service or system"),
    "id": (_string, "a string"), "app": (_string_or_null, "a string or null"),
    "agent": (_string_or_null, "a string or null"),
    "via": (lambda v: v in ("jwt", "bypass", "internal"), "jwt, bypass or internal"),
}

def check_record(rec):
    """Strict v1 validity of a parsed record (ledger-format §1); ValueError on a problem."""
    if not isinstance(rec, dict) or set(rec) != set(RECORD_RULES):
        raise ValueError("a record must be an object with exactly the 14 members of v1")
    _check_numbers(rec, "")
    for obj, rules, prefix in ((rec, RECORD_RULES, ""), (rec["actor"], ACTOR_RULES, "actor.")):
        if prefix and set(obj) != set(rules):
            raise ValueError("actor must be exactly {agent, app, id, kind, via}")
        for k, (test, what) in rules.items():
            if not test(obj[k]):
                raise ValueError(f"{prefix}{k} must be {what}")
    occurred_at_micros(rec["occurred_at"])        # the exact timestamp form

def _check_numbers(v, path):
    """Every number is an integer with |n| <= 2^53 - 1 (no floats anywhere)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return
    if isinstance(v, float) or (is_int(v) and abs(v) > MAX_SAFE):
        raise ValueError(f"number at {path or '.'} is not an integer within +-(2^53 - 1)")
    if isinstance(v, dict):
        for k, x in v.items():
            _check_numbers(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_numbers(x, f"{path}[{i}]")

def csv_cell(value):
    """Formula guard, then RFC 4180 quoting (evidence-bundle.md, records.csv)."""
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        value = "'" + value
    if any(c in value for c in ',"\n\r'):
        value = '"' + value.replace('"', '""') + '"'
    return value

def csv_row(cells):
    return (",".join(csv_cell(c) for c in cells) + "\r\n").encode("utf-8")

def render_csv(rec, entry_hash):
    a = rec["actor"]
    return csv_row([str(rec["position"]), rec["occurred_at"], rec["tenant"], rec["stream"],
                    str(rec["stream_version"]), rec["type"], a["kind"], a["id"], a["app"] or "",
                    a["agent"] or "", a["via"], rec["correlation_id"], entry_hash])

def render_ocsf(rec, entry_hash):
    a = rec["actor"]
    event = {
        "activity_id": 99, "activity_name": rec["type"],
        "actor": {"app_name": a["app"], "authorizations": [{"decision": a["via"]}],
                  "user": {"type": a["kind"], "uid": a["id"]}},
        "api": {"operation": rec["type"], "service": {"name": "glassbox"}},
        "category_name": "Application Activity", "category_uid": 6,
        "class_name": "API Activity", "class_uid": 6003,
        "metadata": {"correlation_uid": rec["correlation_id"],
                     "product": {"name": "Glassbox", "vendor_name": "Glassbox"},
                     "sequence": rec["position"], "tenant_uid": rec["tenant"],
                     "uid": rec["event_id"], "version": "1.1.0"},
        "severity_id": 1, "status_id": 1,
        "time": occurred_at_micros(rec["occurred_at"]) // 1000,       # floor
        "type_uid": 600399,
        "unmapped": {"agent": a["agent"], "entry_hash": entry_hash, "stream": rec["stream"],
                     "stream_version": rec["stream_version"]},
    }
    return canon_bytes(event) + b"\n"

def parse_filters(f):
    """Step 11: only filter members, each of its type or null -> {member: value}."""
    if not isinstance(f, dict):
        raise ValueError("must be an object")
    out = {}
    for k in sorted(f):
        if k not in FILTERS:
            raise ValueError(f"unknown member {k}")
        v, kind = f[k], FILTERS[k][0]
        if v is None:
            continue
        if kind == "str" and not isinstance(v, str):
            raise ValueError(f"{k}: must be a string")
        if kind == "pos" and (not is_int(v) or v < 0):
            raise ValueError(f"{k}: must be an integer >= 0")
        if kind == "time":
            if not isinstance(v, str):
                raise ValueError(f"{k}: must be an RFC 3339 date-time string")
            v = rfc3339_micros(v)
        out[k] = v
    return out

def outside_filter(rec, filters):
    """The first filter (in the documented order) the record fails, or None."""
    t = occurred_at_micros(rec["occurred_at"])
    tests = {"tenant": lambda v: rec["tenant"] == v, "stream": lambda v: rec["stream"] == v,
             "event_type": lambda v: rec["type"] == v, "actor": lambda v: rec["actor"]["id"] == v,
             "correlation_id": lambda v: rec["correlation_id"] == v,
             "from_position": lambda v: rec["position"] >= v,
             "to_position": lambda v: rec["position"] <= v,
             "since": lambda v: t >= v, "until": lambda v: t < v}
    for k, (_, label) in FILTERS.items():
        if k in filters and not tests[k](filters[k]):
            return label
    return None

# --------------------------------------------------------------------------- tar framing
def ustar_header(name, size):
    """The one canonical 512-byte header of evidence-bundle.md "Byte layout"."""
    h = bytearray(512)
    h[0:len(name)] = name.encode("ascii")
    h[100:124] = b"0000644\0" b"0000000\0" b"0000000\0"       # mode, uid, gid
    h[124:136] = b"%011o\0" % size                             # size
    h[136:157] = b"00000000000\0" b"        " b"0"             # mtime, chksum (spaces), typeflag
    h[257:265] = b"ustar\0" b"00"                              # magic, version
    h[329:345] = b"0000000\0" b"0000000\0"                     # devmajor, devminor
    h[148:156] = b"%06o\0 " % sum(h)                           # checksum over the header
    return bytes(h)

class Bundle:
    """Reads the bundle front to back, hashing every byte, with member framing."""
    def __init__(self, f):
        self.f, self.sha, self.files = f, hashlib.sha256(), {}

    def read(self, n):
        out = bytearray()
        while len(out) < n:
            b = self.f.read(min(n - len(out), CHUNK))
            if not b:
                break
            out += b
        self.sha.update(out)
        return bytes(out)

    def header(self, name):
        """Read the next header, which must be the canonical one for `name`; return size."""
        blk = self.read(512)
        require(blk, "bundle", f"the archive ends where the header of {name} belongs")
        require(len(blk) == 512, "bundle", f"the archive ends inside the header of {name}")
        require(blk != bytes(512), "bundle", f"member {name} is missing (a NUL block instead of its header)")
        found = blk[:100].split(b"\0")[0]
        require(found == name.encode("ascii"), "bundle",
                f"expected member {name}, found {found.decode('latin-1')!r}")
        require(re.fullmatch(rb"[0-7]{11}", blk[124:135]), "bundle", f"the header of {name} has no 11-digit octal size")
        size = int(blk[124:135], 8)
        require(blk == ustar_header(name, size), "bundle", f"the header of {name} is not the canonical header")
        return size

    def content(self, name, size):
        """Yield the member's content in chunks (recording its SHA-256 and length);
        an archive that ends inside it fails against the member, after the part read."""
        h, left = hashlib.sha256(), size
        while left:
            want = min(left, CHUNK)
            b = self.read(want)
            h.update(b)
            left -= len(b)
            if b:
                yield b
            if len(b) < want:
                raise Fail(name, f"the archive ends inside {name}")
        self.files[name] = (h.hexdigest(), size)
        pad = -size % 512
        self._padding = (name, pad)

    def padding(self):
        name, pad = self._padding
        b = self.read(pad)
        require(len(b) == pad, "bundle", f"the archive ends inside the padding after {name}")
        require(b.count(0) == pad, "bundle", f"the padding after {name} is not all NUL")

    def member(self, name):
        """Header and whole content of a (small) member."""
        return b"".join(self.content(name, self.header(name)))

    def end(self):
        """Step 15: exactly two NUL blocks, then end of file."""
        self.padding()
        b = self.read(1024)
        require(len(b) == 1024, "bundle", "the end-of-archive marker is missing or short")
        require(b.count(0) == 1024, "bundle", "the end-of-archive marker is not all NUL (an extra member?)")
        require(not self.read(1), "bundle", "bytes after the end-of-archive marker")

def lines_of(chunks):
    """Split a member's content after each `\\n`; a last line without one is yielded as is."""
    buf = b""
    for c in chunks:
        buf += c
        *complete, buf = buf.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if buf:
        yield buf

# --------------------------------------------------------------------------- verification
def verify(bundle, key):
    """Run steps 1-20 over the open bundle; return (records, tree size, bundle SHA-256)."""
    key_name = key[0]
    one_sig = "must hold exactly one signature line, by the verifier key, and no CR"

    # --- manifest.json (member 1, steps 1-4)
    mbytes = bundle.member("manifest.json")
    try:
        manifest = parse_json(mbytes)
    except ValueError as e:
        raise Fail("manifest.json", f"not JSON: {e}")
    require(is_canonical(mbytes, manifest), "manifest.json", "not in canonical form")
    require(isinstance(manifest, dict) and manifest.get("format") == FORMAT,
            "manifest.json", f"format is not {FORMAT}")
    require(set(manifest) == set(MANIFEST_MEMBERS),
            "manifest.json", "members must be exactly " + ", ".join(MANIFEST_MEMBERS))
    cp, files = manifest["checkpoint"], manifest["files"]
    require(isinstance(cp, dict) and set(cp) == {"origin", "root", "tree_size"},
            "manifest.json", "checkpoint must be exactly {origin, root, tree_size}")
    require(isinstance(files, dict) and set(files) == set(FILES),
            "manifest.json", "files must name exactly " + ", ".join(FILES))
    for name in FILES:
        require(isinstance(files[name], dict) and set(files[name]) == {"bytes", "sha256"},
                "manifest.json", f"files.{name} must be exactly {{bytes, sha256}}")
    require(isinstance(manifest["exported_at"], str) and isinstance(manifest["exported_by"], str),
            "manifest.json", "exported_at and exported_by must be strings")

    # --- manifest.sig (member 2, steps 5-7)
    bundle.padding()
    sig = bundle.member("manifest.sig")
    try:
        text = open_note(sig, key, "manifest.sig")
    except ValueError as e:
        raise Fail("manifest.sig", f"signature does not verify: {e}")
    require(exactly_one_signature(sig, key_name), "manifest.sig", one_sig)
    signed = "glassbox evidence bundle manifest\n" + hashlib.sha256(mbytes).hexdigest() + "\n"
    require(text == signed, "manifest.json", "does not match its signed digest")

    # --- checkpoint.txt (member 3, steps 8-10)
    bundle.padding()
    cpt = bundle.member("checkpoint.txt")
    try:
        origin, tree_size, root = parse_checkpoint(open_note(cpt, key, "checkpoint.txt"))
    except ValueError as e:
        raise Fail("checkpoint.txt", f"signature does not verify: {e}")
    require(exactly_one_signature(cpt, key_name), "checkpoint.txt", one_sig)
    require(is_int(cp["tree_size"]) and cp["tree_size"] == tree_size and cp["root"] == root.hex()
            and isinstance(cp["origin"], str) and cp["origin"] == origin,
            "checkpoint.txt", "does not match the manifest's checkpoint")

    # --- records.jsonl (member 4, steps 11-12)
    bundle.padding()
    size = bundle.header("records.jsonl")
    try:
        filters = parse_filters(manifest["filters"])
    except ValueError as e:
        raise Fail("manifest.json", f"filters: {e}")
    kept = []                                     # (position, leaf hash) per record
    csv_sha, ocsf_sha = hashlib.sha256(csv_row(CSV_HEADER)), hashlib.sha256()
    for n, line in enumerate(lines_of(bundle.content("records.jsonl", size)), 1):
        require(line.endswith(b"\n"), "records.jsonl", f"line {n} does not end with a newline")
        body = line[:-1]
        try:
            rec = parse_json(body)
        except ValueError as e:
            raise Fail("records.jsonl", f"line {n}: not JSON: {e}")
        try:
            if not is_canonical(body, rec):
                raise ValueError("not in canonical form")
            check_record(rec)
        except ValueError as e:
            raise Fail("records.jsonl", f"line {n}: {e}")
        p = rec["position"]
        if kept and p <= kept[-1][0]:
            raise Fail("records.jsonl", f"line {n}: position {p} is not after {kept[-1][0]}")
        require(p <= tree_size, "records.jsonl", f"line {n}: position {p} is beyond the checkpoint")
        which = outside_filter(rec, filters)
        require(not which, "records.jsonl", f"line {n}: position {p} is outside the filter ({which})")
        kept.append((p, sha256(b"\x00" + body)))
        entry_hash = hashlib.sha256(body).hexdigest()
        csv_sha.update(render_csv(rec, entry_hash))
        ocsf_sha.update(render_ocsf(rec, entry_hash))

    # --- proofs.jsonl (member 5, steps 13-14)
    bundle.padding()
    size, lines = bundle.header("proofs.jsonl"), 0
    for i, line in enumerate(lines_of(bundle.content("proofs.jsonl", size)), 1):
        lines = i
        require(line.endswith(b"\n"), "proofs.jsonl", f"line {i} does not end with a newline")
        try:
            obj = parse_json(line[:-1])
        except ValueError as e:
            raise Fail("proofs.jsonl", f"line {i}: not JSON: {e}")
        require(is_canonical(line[:-1], obj) and isinstance(obj, dict) and len(obj) == 3, "proofs.jsonl",
                f"line {i}: not exactly {{leaf_index, position, proof}} in canonical form")
        require(i <= len(kept), "proofs.jsonl", f"line {i}: more proofs than records")
        p, leaf = kept[i - 1]
        pos, idx, proof = obj.get("position"), obj.get("leaf_index"), obj.get("proof")
        require(is_int(pos) and pos == p and is_int(idx) and idx == p - 1,
                "proofs.jsonl", f"line {i}: not the proof of position {p}")
        require(isinstance(proof, list), "proofs.jsonl", f"line {i}: no proof")
        require(all(isinstance(h, str) and HEX64.fullmatch(h) for h in proof),
                "proofs.jsonl", f"line {i}: a proof hash is not 64 hex digits")
        try:
            verify_inclusion(p - 1, tree_size, leaf, [bytes.fromhex(h) for h in proof], root)
        except ValueError as e:
            raise Fail("proofs.jsonl", f"line {i}: record {p} is not in the signed tree: {e}")
    require(lines == len(kept), "proofs.jsonl", f"{lines} proofs for {len(kept)} records")

    # --- records.csv, records.ocsf.jsonl (members 6-7): only hashed; end of archive (15)
    for name in ("records.csv", "records.ocsf.jsonl"):
        bundle.padding()
        for _ in bundle.content(name, bundle.header(name)):
            pass
    bundle.end()

    # --- cross-checks against the manifest (steps 16-20)
    for name in ("checkpoint.txt", "records.jsonl", "proofs.jsonl", "records.csv", "records.ocsf.jsonl"):
        (digest, length), want = bundle.files[name], files[name]
        require(want["sha256"] == digest and is_int(want["bytes"]) and want["bytes"] == length,
                name, "digest or size does not match the manifest")
    for name, rendered in (("records.csv", csv_sha), ("records.ocsf.jsonl", ocsf_sha)):
        require(bundle.files[name][0] == rendered.hexdigest(), name, "is not the rendering of records.jsonl")
    rc = manifest["record_count"]
    require(is_int(rc) and rc == len(kept), "manifest.json", "record_count does not match records.jsonl")
    got = (manifest["first_position"], manifest["last_position"])
    want = (kept[0][0], kept[-1][0]) if kept else (None, None)
    require(all(g == w and type(g) is type(w) for g, w in zip(got, want)),   # ints, or both null
            "manifest.json", "first_position or last_position does not match records.jsonl")
    require(manifest["verifier_key_name"] == key_name,
            "manifest.json", "verifier_key_name is not the name of the key it was verified with")
    return len(kept), tree_size, bundle.sha.hexdigest()

# --------------------------------------------------------------------------- command line
USAGE = "usage: verify_bundle.py BUNDLE.tar --key 'NAME+HEXID+BASE64'"

def main(argv):
    paths, keys, args = [], [], list(argv)      # hand-rolled: a key may itself start with "-"
    while args:
        a = args.pop(0)
        if a == "--key" and args:
            keys.append(args.pop(0))
        elif a.startswith("--key="):
            keys.append(a[len("--key="):])
        elif a.startswith("-") and a != "-":
            keys = []                           # unknown option
            break
        else:
            paths.append(a)
    if len(paths) != 1 or len(keys) != 1:
        print(f"error: {USAGE}", file=sys.stderr)
        return 2
    try:
        key = parse_verifier_key(keys[0])
    except ValueError as e:
        print(f"error: --key is not a valid verifier key: {e}", file=sys.stderr)
        return 2
    try:
        try:
            with open(paths[0], "rb") as f:
                count, tree_size, digest = verify(Bundle(f), key)
        except OSError as e:
            raise Fail(paths[0], e.strerror or str(e))
    except Fail as e:
        print(f"FAIL {e.file}: {e.reason}")
        return 1
    print(f"OK {count} records, tree size {tree_size}, bundle sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
