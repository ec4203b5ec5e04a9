#!/usr/bin/env bash
# Builds Glassbox, starts PostgreSQL and Redis, runs the control plane
# (`glassbox serve`: command API + projector) on a local database, and walks
# through a job submission: the receipt, a policy refusal, the job as the read
# models see it, its ledger records, a signed checkpoint and a full verification.
# (Jobs stay `accepted`: the runner service that executes them is the next issue;
# `glassbox sandbox exec` runs code in gVisor directly meanwhile.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

ensure_rust
ensure_postgres
ensure_redis

log "building glassbox (release)"
cargo build --locked --release -p glassbox-cli
gb="$(pwd)/${CARGO_TARGET_DIR:-target}/release/glassbox"
case "${CARGO_TARGET_DIR:-}" in /*) gb="$CARGO_TARGET_DIR/release/glassbox" ;; esac

export GLASSBOX_DATA_DIR="${GLASSBOX_DATA_DIR:-$HOME/.local/share/glassbox}"
mkdir -p "$GLASSBOX_DATA_DIR"
chmod 700 "$GLASSBOX_DATA_DIR"
export GLASSBOX_ENV=development
secret_file="$GLASSBOX_DATA_DIR/dev-hs256-secret"
if [ ! -s "$secret_file" ]; then
  (umask 077; head -c 32 /dev/urandom | base64 > "$secret_file")
fi
GLASSBOX_AUTH_HS256_SECRET="$(cat "$secret_file")"
export GLASSBOX_AUTH_HS256_SECRET
server="${GLASSBOX_TEST_DATABASE_URL%/*}"
psql "$GLASSBOX_TEST_DATABASE_URL" -Atc "SELECT 1 FROM pg_database WHERE datname = 'glassbox_try'" | grep -q 1 \
  || psql "$GLASSBOX_TEST_DATABASE_URL" -qc "CREATE DATABASE glassbox_try"
export GLASSBOX_DATABASE_URL="$server/glassbox_try" DATABASE_URL="$server/glassbox_try"
export GLASSBOX_HTTP_ADDR="${GLASSBOX_HTTP_ADDR:-127.0.0.1:8080}"
api="http://$GLASSBOX_HTTP_ADDR"
key="$GLASSBOX_DATA_DIR/keys/ledger.key"

log "starting glassbox serve on $api (logs: $GLASSBOX_DATA_DIR/serve.log)"
"$gb" serve --key-file "$key" >"$GLASSBOX_DATA_DIR/serve.log" 2>&1 &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true; wait $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$api/readyz" 2>/dev/null && break
  kill -0 $serve_pid 2>/dev/null || { cat "$GLASSBOX_DATA_DIR/serve.log"; exit 1; }
  sleep 0.2
done

pretty() { python3 -m json.tool 2>/dev/null || cat; }
acme=$("$gb" token --tenant acme --subject alice --roles submitter)
restricted=$("$gb" token --tenant restricted --subject bob --roles submitter)

log "submitting a python job as alice@acme (Idempotency-Key: try-$$)"
receipt=$(curl -sS -X POST "$api/v1/jobs" -H "Authorization: Bearer $acme" \
  -H "Idempotency-Key: try-$$" -H 'content-type: application/json' \
  -d '{"language": "python", "code": "print(\"hello from glassbox\")", "limits": {"wall_time_ms": 3000}}')
echo "$receipt" | pretty
job=$(printf '%s' "$receipt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
pos=$(printf '%s' "$receipt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["position"])')

log "the same request again: same answer, no second job"
curl -sS -o /dev/null -w 'HTTP %{http_code}\n' -X POST "$api/v1/jobs" -H "Authorization: Bearer $acme" \
  -H "Idempotency-Key: try-$$" -H 'content-type: application/json' \
  -d '{"language": "python", "code": "print(\"hello from glassbox\")", "limits": {"wall_time_ms": 3000}}'

log "a job the policy refuses (tenant 'restricted' allows python only): 403, recorded"
curl -sS -X POST "$api/v1/jobs" -H "Authorization: Bearer $restricted" -H 'content-type: application/json' \
  -d '{"language": "node", "code": "console.log(1)"}' | pretty

log "the job as the read models see it (min_position=$pos: read-your-writes)"
curl -sS "$api/v1/jobs/$job?min_position=$pos" -H "Authorization: Bearer $acme" | pretty

log "its ledger records"
curl -sS "$api/v1/jobs/$job/events" -H "Authorization: Bearer $acme" \
  | python3 -c 'import json,sys
for e in json.load(sys.stdin)["events"]:
    r = e["record"]
    print(e["position"], r["type"], r["data"].get("policy", ""), r["data"].get("decision", ""), e["entry_hash"][:16])'

sleep 1.5
log "status (the projector signs a checkpoint at most every second)"
curl -sS "$api/v1/status" -H "Authorization: Bearer $acme" | pretty
log "verifying the whole ledger against its signed checkpoints"
"$gb" ledger verify --key-file "$key"
log "inclusion proof of the job's first record"
first=$(printf '%s' "$receipt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["submitted_position"])')
"$gb" ledger proof inclusion "$first"
log "done: the ledger is in $DATABASE_URL; 'glassbox serve' stops now"
