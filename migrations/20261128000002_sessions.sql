-- The sessions read model is the domain's Session aggregate, folded by
-- Session::apply and stored with its row; the columns are what queries
-- filter on (the reaper's deadlines, a runner's sessions, a tenant's open
-- sessions). Read models are disposable: the projector refolds the whole
-- ledger from position 1 so every session already recorded gets its row.
CREATE TABLE projections.sessions (
    session_id       text        PRIMARY KEY,
    tenant           text        NOT NULL,
    status           text        NOT NULL,
    language         text        NOT NULL,
    runner           text,
    opened_position  bigint      NOT NULL,
    last_position    bigint      NOT NULL,
    updated_at       timestamptz NOT NULL,
    next_deadline    timestamptz,
    data_destroyed   boolean     NOT NULL,
    state            jsonb       NOT NULL
);
CREATE INDEX sessions_tenant_position ON projections.sessions (tenant, opened_position DESC);
CREATE INDEX sessions_live ON projections.sessions (next_deadline)
    WHERE status IN ('opening', 'active');
CREATE INDEX sessions_runner ON projections.sessions (runner)
    WHERE status IN ('opening', 'active');
DELETE FROM projections.jobs;
DELETE FROM projections.policy_decisions;
DELETE FROM projections.audit_index;
UPDATE projections.checkpoints SET position = 0, occurred_at = NULL;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON projections.sessions TO glassbox_service;
