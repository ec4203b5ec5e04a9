#!/usr/bin/env bash
# Build the Glassbox plane images with podman:
#   localhost/glassbox-control-plane:TAG  (glassbox serve, user 65532)
#   localhost/glassbox-data-plane:TAG     (glassbox runner + runsc, root)
#
# 1. `glassbox images build` makes the Debian bases of docker/bases.toml
#    (cached by recipe digest, so a rebuild with unchanged recipes is quick);
# 2. each base is imported into podman once per digest, tagged
#    localhost/glassbox-base[-runsc]:<12 hex of the digest> and :bookworm;
# 3. the binaries are stripped into a temporary build context (the originals
#    are never touched) and both Dockerfiles are built with --format docker
#    (the OCI format drops HEALTHCHECK).
#
# The Dockerfiles have no RUN instruction, so nothing is ever run in a
# container: this works on hosts where `podman run` does not (cgroup v1).
# Run it as root: debootstrap needs root, and the images go to root's podman
# storage (where `podman image mount` works for testing).
#
# Usage: docker/build.sh [--glassbox BIN] [--agent BIN] [--cli BIN] [--tag TAG]
#                        [--source URL]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

usage() {
  cat <<EOF
Usage: $0 [options]

  --glassbox BIN  the glassbox binary to package
                  (default: \${CARGO_TARGET_DIR:-$root/target}/release/glassbox)
  --agent BIN     the glassbox-session-agent binary to package
                  (default: glassbox-session-agent next to --glassbox)
  --cli BIN       the glassbox binary that runs \`images build/list/export\` on
                  this host (default: the --glassbox binary)
  --tag TAG       tag of the two plane images (default: dev)
  --source URL    org.opencontainers.image.source (default: git remote origin)
  -h, --help      this help
EOF
}

die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*" >&2; }

target_dir=${CARGO_TARGET_DIR:-$root/target}
glassbox=$target_dir/release/glassbox
agent=
cli=
tag=dev
source_url=

while (($#)); do
  case $1 in
    --glassbox) (($# >= 2)) || die "--glassbox needs a path"; glassbox=$2; shift 2 ;;
    --agent) (($# >= 2)) || die "--agent needs a path"; agent=$2; shift 2 ;;
    --cli) (($# >= 2)) || die "--cli needs a path"; cli=$2; shift 2 ;;
    --tag) (($# >= 2)) || die "--tag needs a value"; tag=$2; shift 2 ;;
    --source) (($# >= 2)) || die "--source needs a URL"; source_url=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
agent=${agent:-$(dirname "$glassbox")/glassbox-session-agent}
cli=${cli:-$glassbox}
if [[ -z $source_url ]]; then
  source_url=$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)
  source_url=${source_url:-unknown}
fi
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)

# ---- preflight --------------------------------------------------------------
command -v podman >/dev/null 2>&1 ||
  die "podman is not installed (Debian: apt-get install podman); it builds the images"
for b in "$glassbox" "$agent" "$cli"; do
  [[ -f $b && -x $b ]] || die "$b is not an executable file (cargo build --release -p glassbox-cli -p glassbox-session-agent, or pass --glassbox/--agent)"
done
if command -v objcopy >/dev/null 2>&1; then
  strip_into() { objcopy --strip-debug "$1" "$2"; }
elif command -v strip >/dev/null 2>&1; then
  strip_into() { strip --strip-debug -o "$2" "$1"; }
else
  die "neither objcopy nor strip found (Debian: apt-get install binutils)"
fi
if command -v jq >/dev/null 2>&1; then
  # The digest of the last listed image named $1.
  digest_of() { jq -r --arg n "$1" '[.[] | select(.name == $n)] | last | .digest // empty'; }
elif command -v python3 >/dev/null 2>&1; then
  digest_of() {
    python3 -c 'import json, sys
d = [i["digest"] for i in json.load(sys.stdin) if i.get("name") == sys.argv[1]]
print(d[-1] if d else "")' "$1"
  }
else
  die "jq or python3 is needed to read \`glassbox images list --json\` (Debian: apt-get install jq)"
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/glassbox-docker.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- 1. bases ---------------------------------------------------------------
step "building bases plane-base, plane-base-runsc ($here/bases.toml)"
"$cli" images build --recipes "$here/bases.toml" plane-base plane-base-runsc

step "listing images"
"$cli" images list --json >"$work/images.json"

# import_base NAME REPO: make REPO:<12 hex> and REPO:bookworm the image NAME.
import_base() {
  local name=$1 repo=$2 digest hex short
  digest=$(digest_of "$name" <"$work/images.json")
  [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] ||
    die "\`glassbox images list --json\` has no sha256 digest for $name (got '${digest}')"
  hex=${digest#sha256:}
  short=${hex:0:12}
  if podman image exists "$repo:$short"; then
    step "$repo:$short already in podman ($digest); not importing"
  else
    step "exporting $name ($digest)"
    "$cli" images export "$name" --tar "$work/$name.tar"
    step "importing $name as $repo:$short"
    podman import --quiet \
      --change "LABEL org.glassbox.base.name=$name" \
      --change "LABEL org.glassbox.base.digest=$digest" \
      --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      --message "glassbox images export $name ($digest)" \
      "$work/$name.tar" "$repo:$short" >/dev/null
    rm -f "$work/$name.tar"
  fi
  step "tagging $repo:$short as $repo:bookworm"
  podman tag "$repo:$short" "$repo:bookworm"
}
import_base plane-base localhost/glassbox-base
import_base plane-base-runsc localhost/glassbox-base-runsc

# ---- 2. build context -------------------------------------------------------
ctx=$work/context
# empty/: the data plane's /var/lib/glassbox/images; var-lib/glassbox/: the
# control plane's data directory (see the Dockerfiles).
mkdir -p "$ctx/empty" "$ctx/var-lib/glassbox"
chmod 0755 "$ctx/empty"
chmod 0700 "$ctx/var-lib/glassbox"
step "stripping debug info: $glassbox -> context/glassbox"
strip_into "$glassbox" "$ctx/glassbox"
step "stripping debug info: $agent -> context/glassbox-session-agent"
strip_into "$agent" "$ctx/glassbox-session-agent"
chmod 0755 "$ctx/glassbox" "$ctx/glassbox-session-agent"

# ---- 3. images --------------------------------------------------------------
build() {
  local plane=$1 image=localhost/glassbox-$1:$tag
  step "building $image (docker/$plane.Dockerfile)"
  podman build --format docker --pull=never \
    --file "$here/$plane.Dockerfile" \
    --build-arg "SOURCE_URL=$source_url" \
    --label "org.opencontainers.image.version=$tag" \
    --label "org.opencontainers.image.revision=$revision" \
    --tag "$image" \
    "$ctx"
}
build control-plane
build data-plane

step "done: localhost/glassbox-control-plane:$tag localhost/glassbox-data-plane:$tag"
