-- Per-job data keys for envelope encryption of blobs (code, stdin, outputs,
-- artifacts). Destroying a key nulls its wrapped bytes: every blob under it is
-- unreadable from then on (crypto-shredding) while the ledger still verifies.
CREATE SCHEMA IF NOT EXISTS blobs;

CREATE TABLE blobs.data_keys (
    key_id        text        PRIMARY KEY,
    tenant        text        NOT NULL,
    kek_id        text        NOT NULL,
    wrapped       bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);

GRANT USAGE ON SCHEMA blobs TO glassbox_service;
GRANT SELECT, INSERT, UPDATE ON blobs.data_keys TO glassbox_service;
