-- Read models folded from the ledger by the projector (glassbox-projector).
-- Only the projector writes these tables; everything in them can be rebuilt from
-- the ledger (`glassbox projector rebuild`) with identical contents, so no column
-- may depend on wall-clock time at projection: times come from the records.
CREATE SCHEMA IF NOT EXISTS projections;

-- One row per projector: the last ledger position folded into its tables,
-- updated in the same transaction as the tables (exactly-once effects).
CREATE TABLE projections.checkpoints (
    projector   text        PRIMARY KEY,
    position    bigint      NOT NULL CHECK (position >= 0),
    -- occurred_at of the record at `position` (for lag in seconds).
    occurred_at timestamptz
);

CREATE TABLE projections.jobs (
    job_id              text        PRIMARY KEY,
    tenant              text        NOT NULL,
    status              text        NOT NULL,
    language            text        NOT NULL,
    submitted_by        text        NOT NULL,
    app                 text,
    agent               text,
    idempotency_key     text,
    submitted_position  bigint      NOT NULL,
    submitted_at        timestamptz NOT NULL,
    last_position       bigint      NOT NULL,
    updated_at          timestamptz NOT NULL,
    requested_limits    jsonb       NOT NULL,
    effective_limits    jsonb,
    secrets             jsonb       NOT NULL,
    dependencies        jsonb       NOT NULL,
    reasons             jsonb       NOT NULL DEFAULT '[]',
    cancel_requested    boolean     NOT NULL DEFAULT false,
    attempt             bigint      NOT NULL DEFAULT 0,
    runner              text,
    outcome             text,
    exit_code           bigint,
    signal              bigint,
    wall_ms             bigint,
    result              jsonb,
    artifacts           jsonb       NOT NULL DEFAULT '[]',
    data_destroyed      boolean     NOT NULL DEFAULT false
);
CREATE INDEX jobs_tenant_position ON projections.jobs (tenant, submitted_position DESC);

CREATE TABLE projections.policy_decisions (
    position        bigint      PRIMARY KEY,
    tenant          text        NOT NULL,
    stream          text        NOT NULL,
    job_id          text,
    policy          text        NOT NULL,
    decision        text        NOT NULL,
    reasons         jsonb       NOT NULL,
    bundle_digest   text        NOT NULL,
    input_digest    text        NOT NULL,
    error           text,
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX policy_decisions_tenant ON projections.policy_decisions (tenant, position);
CREATE INDEX policy_decisions_job ON projections.policy_decisions (job_id);

-- Every record, indexed for audit search (the record bytes stay in the ledger).
CREATE TABLE projections.audit_index (
    position        bigint      PRIMARY KEY,
    tenant          text        NOT NULL,
    stream          text        NOT NULL,
    event_type      text        NOT NULL,
    actor_kind      text        NOT NULL,
    actor_id        text        NOT NULL,
    actor_app       text,
    actor_agent     text,
    auth_via        text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text        NOT NULL,
    entry_hash      bytea       NOT NULL
);
CREATE INDEX audit_index_tenant ON projections.audit_index (tenant, position);
CREATE INDEX audit_index_stream ON projections.audit_index (stream, position);
CREATE INDEX audit_index_type ON projections.audit_index (event_type, position);
CREATE INDEX audit_index_actor ON projections.audit_index (actor_id, position);
CREATE INDEX audit_index_time ON projections.audit_index (occurred_at);

GRANT USAGE ON SCHEMA projections TO glassbox_service;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA projections TO glassbox_service;
