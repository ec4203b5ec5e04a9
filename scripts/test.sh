#!/usr/bin/env bash
# The whole test suite: starts or installs what the tests need, then formatting,
# lints and every crate's tests against the real PostgreSQL, Redis and runsc.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

ensure_rust
ensure_postgres
ensure_redis
ensure_runsc
ensure_debootstrap
ensure_podman
ensure_host_python
ensure_prometheus
ensure_s3
ensure_schemathesis
ensure_mcp_sdk

# Databases left by earlier interrupted test runs.
for db in $(psql "$GLASSBOX_TEST_DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'glassbox_test_%'"); do
  psql "$GLASSBOX_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
done

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (build)"
cargo test --workspace --locked --no-run
case "${CARGO_TARGET_DIR:-}" in
  /*) target="$CARGO_TARGET_DIR" ;;
  *) target="$(pwd)/${CARGO_TARGET_DIR:-target}" ;;
esac
ensure_runtime_images "$target/debug/glassbox"
log "cargo test"
cargo test --workspace --locked
