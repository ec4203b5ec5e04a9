# Starts (and on a fresh Debian machine installs) what Glassbox and its tests need.
# Sourced by scripts/test.sh and scripts/try.sh; each function is idempotent.

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
  if [ -z "${GLASSBOX_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    export GLASSBOX_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install a Rust toolchain >= 1.88 (rustup) first"
    exit 2
  fi
}

# PostgreSQL on 127.0.0.1:5432. Exports GLASSBOX_TEST_DATABASE_URL (a role that
# may create databases) unless it is already set.
ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not come up"; exit 2; }
  if [ -z "${GLASSBOX_TEST_DATABASE_URL:-}" ]; then
    if psql -qtA "postgres://postgres@127.0.0.1:5432/postgres" -c 'select 1' >/dev/null 2>&1; then
      export GLASSBOX_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    else
      # A stock Debian cluster wants a password on TCP: give the superuser one.
      log "setting a local password for the postgres role"
      su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'glassbox'\"" >/dev/null
      export GLASSBOX_TEST_DATABASE_URL="postgres://postgres:glassbox@127.0.0.1:5432/postgres"
    fi
  fi
}

# Redis on 127.0.0.1:6379 (sessions and rate limits).
ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis"
    apt_install redis-server
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/glassbox.log
    for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
  fi
}

# gVisor's runsc (Debian package).
ensure_runsc() {
  if ! command -v runsc >/dev/null 2>&1; then
    log "installing gVisor (runsc)"
    apt_install runsc
  fi
}

# debootstrap builds the runtime images (and the plane images' bases).
ensure_debootstrap() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap (builds the runtime images)"
    apt_install debootstrap
  fi
}

# podman (and buildah's libraries) build the plane images in docker/; binutils
# strips the binaries that go into them.
ensure_podman() {
  if ! command -v podman >/dev/null 2>&1; then
    log "installing podman (builds the plane images)"
    apt_install podman
  fi
  command -v objcopy >/dev/null 2>&1 || apt_install binutils
}

# The host's python3 with pip builds and downloads wheels for the dependency
# tests (sandboxes never use the host's python: they run on their images).
ensure_host_python() {
  if [ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
    log "installing python3 and pip (test tooling)"
    apt_install python3 python3-pip
  fi
}

# The runtime images (python, node, bash) in /var/lib/glassbox/images (or
# GLASSBOX_IMAGES_DIR), built by `$1 images build` — only those whose recipe
# changed since the last build.
ensure_runtime_images() {
  log "runtime images (glassbox images build: cached by recipe digest)"
  "$1" images build
}

# Prometheus (server and promtool) from Debian: the telemetry tests scrape the
# services with a real server and check the alert rules with promtool.
ensure_prometheus() {
  if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    log "installing prometheus (server and promtool)"
    apt_install prometheus
  fi
}

# An S3-compatible server for the blob store's S3 path (moto_server from PyPI).
# Exports GLASSBOX_TEST_S3_ENDPOINT.
ensure_s3() {
  export GLASSBOX_TEST_S3_ENDPOINT="${GLASSBOX_TEST_S3_ENDPOINT:-http://127.0.0.1:5000}"
  if curl -fsS -o /dev/null "$GLASSBOX_TEST_S3_ENDPOINT/" 2>/dev/null; then
    return
  fi
  if ! python3 -c "import moto.server, flask" >/dev/null 2>&1; then
    log "installing moto_server (S3-compatible test server)"
    python3 -m pip install -q "moto[server]==5.2.5" >&2
  fi
  log "starting moto_server on 127.0.0.1:5000"
  mkdir -p /var/log/glassbox
  nohup python3 -m moto.server -H 127.0.0.1 -p 5000 >/var/log/glassbox/moto.log 2>&1 &
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null "$GLASSBOX_TEST_S3_ENDPOINT/" 2>/dev/null && return
    sleep 0.5
  done
  log "moto_server did not come up (see /var/log/glassbox/moto.log)"
  exit 2
}

# schemathesis (property-based API fuzzing against /openapi.json), from PyPI.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  if command -v schemathesis >/dev/null 2>&1 \
     && schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    export GLASSBOX_SCHEMATHESIS="$(command -v schemathesis)"
    return
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-pip
  fi
  log "installing schemathesis $SCHEMATHESIS_VERSION from PyPI"
  python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION" >&2 \
    || python3 -m pip install -q --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION" >&2
  GLASSBOX_SCHEMATHESIS="$(command -v schemathesis || true)"
  if [ -z "$GLASSBOX_SCHEMATHESIS" ]; then
    GLASSBOX_SCHEMATHESIS="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/schemathesis"
  fi
  export GLASSBOX_SCHEMATHESIS
}

# The official MCP Python SDK (PyPI `mcp`), the client of the MCP end-to-end
# tests. Exports GLASSBOX_MCP_PYTHON (a python3 that imports it).
MCP_SDK_VERSION=2.3.0
ensure_mcp_sdk() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-pip
  fi
  if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$MCP_SDK_VERSION')" 2>/dev/null; then
    log "installing the MCP Python SDK (mcp $MCP_SDK_VERSION) from PyPI"
    python3 -m pip install -q "mcp==$MCP_SDK_VERSION" >&2 \
      || python3 -m pip install -q --break-system-packages "mcp==$MCP_SDK_VERSION" >&2
  fi
  # The outside bundle verifier (tests/outside-verifier) needs Ed25519 from
  # the `cryptography` package.
  if ! python3 -c "import cryptography.hazmat.primitives.asymmetric.ed25519" 2>/dev/null; then
    log "installing cryptography from PyPI (outside verifier)"
    python3 -m pip install -q cryptography >&2 \
      || python3 -m pip install -q --break-system-packages cryptography >&2
  fi
  GLASSBOX_MCP_PYTHON="$(command -v python3)"
  export GLASSBOX_MCP_PYTHON
}
