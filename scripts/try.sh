#!/usr/bin/env bash
# From nothing to a job's output (as root on Debian): installs what is missing
# (Rust, PostgreSQL binaries, Redis, gVisor's runsc, debootstrap), builds
# Glassbox and the runtime images, starts
# `glassbox dev` (command API + projector + runner, on a private PostgreSQL
# cluster unless DATABASE_URL is set), runs programs through it with
# `glassbox run`, shows a job's ledger records and verifies the whole ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

ensure_rust
ensure_postgres
ensure_redis
ensure_runsc
ensure_debootstrap

log "building glassbox (release)"
cargo build --locked --release -p glassbox-cli -p glassbox-session-agent
case "${CARGO_TARGET_DIR:-}" in
  /*) gb="$CARGO_TARGET_DIR/release/glassbox" ;;
  *) gb="$(pwd)/${CARGO_TARGET_DIR:-target}/release/glassbox" ;;
esac

export GLASSBOX_DATA_DIR="${GLASSBOX_DATA_DIR:-$HOME/.local/share/glassbox}"
export GLASSBOX_HTTP_ADDR="${GLASSBOX_HTTP_ADDR:-127.0.0.1:8080}"
mkdir -p "$GLASSBOX_DATA_DIR"
api="http://$GLASSBOX_HTTP_ADDR"
key="$GLASSBOX_DATA_DIR/keys/ledger.key"

# The runtime images (python, node, bash) the sandboxes run on: built once
# (about 2 minutes), then reused while their recipes do not change.
log "runtime images (glassbox images build)"
"$gb" images build

log "starting glassbox dev on $api (log: $GLASSBOX_DATA_DIR/dev.log)"
"$gb" dev --key-file "$key" >"$GLASSBOX_DATA_DIR/dev.log" 2>&1 &
dev_pid=$!
trap 'kill -INT $dev_pid 2>/dev/null || true; wait $dev_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  curl -fsS -o /dev/null "$api/readyz" 2>/dev/null && break
  kill -0 $dev_pid 2>/dev/null || { cat "$GLASSBOX_DATA_DIR/dev.log"; exit 1; }
  sleep 0.2
done
curl -fsS -o /dev/null "$api/readyz" || { cat "$GLASSBOX_DATA_DIR/dev.log"; exit 1; }

work=$(mktemp -d)
cat > "$work/hello.py" <<'PY'
import platform, sys
print("hello from a gVisor sandbox, python", platform.python_version(), "args", sys.argv[1:])
PY
echo 'console.log(require("fs").readFileSync(0, "utf8").trim().toUpperCase())' > "$work/shout.js"

log "glassbox run hello.py -- a b"
"$gb" run "$work/hello.py" -- a b
log "echo 'piped stdin' | glassbox run shout.js --stdin -"
echo 'piped stdin' | "$gb" run "$work/shout.js" --stdin -
log "glassbox run --json (a program that exits 3)"
printf 'import sys\nprint("bye")\nsys.exit(3)\n' > "$work/exit3.py"
"$gb" run --json "$work/exit3.py" || echo "(exit code $? — the program's own)"

log "a session: state and files stay between calls (glassbox session …)"
sid=$("$gb" session create --lang python)
echo "session $sid"
"$gb" session exec "$sid" 'import math; radius = 2'
"$gb" session exec "$sid" 'print("area", round(math.pi * radius ** 2, 3))'
printf 'a,b\n1,2\n3,4\n' > "$work/in.csv"
"$gb" session cp "$work/in.csv" "$sid:data/in.csv"
"$gb" session exec "$sid" --command 'wc -l data/in.csv'
"$gb" session ls "$sid" data
"$gb" session exec "$sid" 'open("out.txt", "w").write(str(sum(1 for _ in open("data/in.csv"))))'
"$gb" session cp "$sid:out.txt" "$work/out.txt" && echo "copied out: $(cat "$work/out.txt") lines"
"$gb" session close "$sid"

log "the ledger records of the first job (glassbox token mints a development JWT)"
token=$("$gb" token)
job=$(curl -fsS "$api/v1/jobs?limit=3" -H "Authorization: Bearer $token" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][-1]["job_id"])')
curl -fsS "$api/v1/jobs/$job/events" -H "Authorization: Bearer $token" \
  | python3 -c 'import json,sys
for e in json.load(sys.stdin)["events"]:
    r = e["record"]; d = r["data"]
    note = d.get("policy") or d.get("outcome") or d.get("runner") or ""
    print("%4d %-26s %-20s %s" % (e["position"], r["type"], note, e["entry_hash"][:16]))'

sleep 1.2
log "verifying the whole ledger against the checkpoints the projector signed"
db="${GLASSBOX_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:${GLASSBOX_DEV_PG_PORT:-54329}/glassbox}}"
DATABASE_URL="$db" "$gb" ledger verify --key-file "$key"
log "an evidence bundle of tenant 'default', verified offline with the verifier key"
DATABASE_URL="$db" "$gb" audit export --key-file "$key" --tenant default --out "$work/evidence.tar"
"$gb" audit verify-bundle "$work/evidence.tar" --key "$("$gb" keys verifier --key-file "$key")"
log "the same ledger verified by the API (an auditor's token)"
curl -fsS -X POST "$api/v1/audit/verify" -H "Authorization: Bearer $("$gb" token --tenant default --roles auditor)" \
  | python3 -c 'import json,sys; v=json.load(sys.stdin); print("verifies:", v["verifies"], "records:", v.get("report", {}).get("records"))'
rm -rf "$work"
log "done; 'glassbox dev' stops now (run it yourself to keep it: $gb dev)"
