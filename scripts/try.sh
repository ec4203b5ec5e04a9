#!/usr/bin/env bash
# Builds Glassbox, starts PostgreSQL, and shows the ledger at work: events are
# appended, a checkpoint is signed, the ledger is verified and a Merkle proof is
# printed. (`glassbox dev` and job execution arrive with the data-plane issue.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

ensure_rust
ensure_postgres

log "building glassbox"
cargo build --locked --release -p glassbox-cli
gb="${CARGO_TARGET_DIR:-target}/release/glassbox"

export GLASSBOX_DATA_DIR="${GLASSBOX_DATA_DIR:-$HOME/.local/share/glassbox}"
key="$GLASSBOX_DATA_DIR/keys/ledger.key"
[ -f "$key" ] || "$gb" keys generate --key-file "$key" >/dev/null

log "appending 5,000 events (and measuring them against plain INSERTs)"
out=$("$gb" bench ledger --database-url "$GLASSBOX_TEST_DATABASE_URL" --appends 400 --batches 10 --size 5000 --keep --key-file "$key")
echo "$out"
export DATABASE_URL
DATABASE_URL=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["database_url"])')

log "the checkpoint signed over it with your key (C2SP signed note)"
"$gb" ledger checkpoint --key-file "$key"
log "verifying the whole ledger"
"$gb" ledger verify --key-file "$key"
log "inclusion proof of record 42"
"$gb" ledger proof inclusion 42
log "record 42"
"$gb" ledger show 42
log "the ledger is in $DATABASE_URL"
