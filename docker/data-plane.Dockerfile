# Glassbox data plane: `glassbox runner`, which claims jobs and runs each one in
# a gVisor sandbox (runsc), with glassbox-session-agent for sessions.
#
# Built by docker/build.sh with `podman build --format docker` (the OCI format
# drops HEALTHCHECK). No RUN instructions: the base is a Debian root filesystem
# made by `glassbox images build` (docker/bases.toml, image plane-base-runsc:
# ca-certificates and runsc) and imported as
# localhost/glassbox-base-runsc:bookworm. The build context holds the two
# stripped binaries and an empty directory `empty/`.
FROM localhost/glassbox-base-runsc:bookworm

# Where the source lives; docker/build.sh passes --source (default: the git remote).
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="glassbox-data-plane" \
      org.opencontainers.image.description="Glassbox data plane: the sandbox runner (glassbox runner) with gVisor runsc and the session agent" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="localhost/glassbox-base-runsc:bookworm"

COPY --chown=0:0 --chmod=0755 glassbox glassbox-session-agent /usr/local/bin/

ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root \
    GLASSBOX_DATA_DIR=/var/lib/glassbox \
    GLASSBOX_RUNSC=/usr/bin/runsc \
    GLASSBOX_SANDBOX_DIR=/run/glassbox \
    GLASSBOX_SESSION_AGENT=/usr/local/bin/glassbox-session-agent \
    GLASSBOX_RUNNER_METRICS_ADDR=0.0.0.0:9464
# Also needed at run time: DATABASE_URL (the runner reads the ledger and
# appends its records) and GLASSBOX_RUNNER_ID, unique per runner.

# Runtime root filesystems (made by `glassbox images build` and shared
# read-only by the sandboxes): keep them across container restarts. The
# directory is created in the image too (COPY of the context's empty
# directory), so the tree works when run from `podman image mount`.
COPY --chown=0:0 empty/ /var/lib/glassbox/images/
VOLUME ["/var/lib/glassbox/images"]

# Runs as root, deliberately: runsc (gVisor) needs root to set up each
# sandbox (namespaces, cgroups, the chroot and mounts of its sentry and gofer),
# and the runner itself mounts and unmounts each job's workspace (mount,
# umount); none of that works as another user. The container needs the
# privileges too: run it --privileged, or with an equivalent capability set,
# seccomp and AppArmor profile. The isolation boundary is the gVisor sandbox,
# in which a job's code runs as nobody, not this container's user.
USER 0:0

EXPOSE 9464

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/glassbox", "healthcheck", "http://127.0.0.1:9464/healthz"]

ENTRYPOINT ["/usr/local/bin/glassbox"]
CMD ["runner"]
