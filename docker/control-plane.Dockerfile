# Glassbox control plane: `glassbox serve` (command API + projector).
#
# Built by docker/build.sh with `podman build --format docker` (the OCI format
# drops HEALTHCHECK). No RUN instructions: the base is a Debian root filesystem
# made by `glassbox images build` (docker/bases.toml, image plane-base) and
# imported as localhost/glassbox-base:bookworm, and podman cannot run
# containers on every build host. The build context holds only the stripped
# binary and the data directory `var-lib/glassbox/` (mode 0700).
FROM localhost/glassbox-base:bookworm

# Where the source lives; docker/build.sh passes --source (default: the git remote).
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="glassbox-control-plane" \
      org.opencontainers.image.description="Glassbox control plane: command API and projector (glassbox serve)" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="localhost/glassbox-base:bookworm"

# Owned by root and not writable by the service user.
COPY --chown=0:0 --chmod=0755 glassbox /usr/local/bin/glassbox

# The data directory (key-encryption key, local blobs): 0700, owned by the
# service user. Without RUN the only way to make it is to COPY it from the
# context, and it is copied as the content of var-lib/ because buildah applies
# neither the source's mode nor --chmod to a COPY's destination directory
# itself (/var/lib stays root's).
COPY --chown=65532:65532 var-lib/ /var/lib/

ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/lib/glassbox \
    GLASSBOX_DATA_DIR=/var/lib/glassbox \
    GLASSBOX_HTTP_ADDR=0.0.0.0:8080
# Also needed at run time: DATABASE_URL, GLASSBOX_REDIS_URL, the auth settings
# (GLASSBOX_AUTH_JWKS_FILE or _URL) and, for signed checkpoints,
# GLASSBOX_LEDGER_KEY_FILE.

VOLUME ["/var/lib/glassbox"]
WORKDIR /var/lib/glassbox

# Numeric: the base has no passwd entry for 65532 (it cannot be added without
# RUN), and a numeric USER needs none.
USER 65532:65532

EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/glassbox", "healthcheck", "http://127.0.0.1:8080/readyz"]

ENTRYPOINT ["/usr/local/bin/glassbox"]
CMD ["serve"]
