-- The jobs read model is the domain's Job aggregate (glassbox-domain), folded
-- by Job::apply and stored with its row; the columns are what queries filter
-- on. Read models are disposable: the new table starts empty and the
-- projector refolds the whole ledger from position 1 (rebuild), so every row
-- is the new fold's.
DROP TABLE projections.jobs;
CREATE TABLE projections.jobs (
    job_id              text        PRIMARY KEY,
    tenant              text        NOT NULL,
    status              text        NOT NULL,
    language            text        NOT NULL,
    submitted_position  bigint      NOT NULL,
    last_position       bigint      NOT NULL,
    updated_at          timestamptz NOT NULL,
    data_destroyed      boolean     NOT NULL,
    state               jsonb       NOT NULL
);
CREATE INDEX jobs_tenant_position ON projections.jobs (tenant, submitted_position DESC);
CREATE INDEX jobs_runnable ON projections.jobs (submitted_position)
    WHERE status IN ('accepted', 'claimed', 'running');
DELETE FROM projections.policy_decisions;
DELETE FROM projections.audit_index;
UPDATE projections.checkpoints SET position = 0, occurred_at = NULL;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON projections.jobs TO glassbox_service;
