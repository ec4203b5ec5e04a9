-- Ledger format v1 storage (docs/ledger-format.md). Only the glassbox-events crate
-- writes these tables, and nothing ever updates or deletes a record.
CREATE SCHEMA IF NOT EXISTS ledger;

-- One row per record: the exact canonical bytes and their SHA-256 entry hash.
-- The other columns are copies of members of `canonical`, kept for indexing; the
-- verifier checks that they agree with the bytes.
CREATE TABLE ledger.records (
    position        bigint      PRIMARY KEY CHECK (position >= 1),
    event_id        uuid        NOT NULL UNIQUE,
    stream          text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version >= 1),
    event_type      text        NOT NULL,
    tenant          text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    canonical       bytea       NOT NULL,
    entry_hash      bytea       NOT NULL CHECK (length(entry_hash) = 32),
    UNIQUE (stream, stream_version)
);
CREATE INDEX records_tenant_position ON ledger.records (tenant, position);
CREATE INDEX records_type_position ON ledger.records (event_type, position);

-- The single head row: the last position, its entry hash, and the Merkle
-- frontier (hashes of range_nodes(0, position), concatenated). Appends lock it
-- with SELECT … FOR UPDATE, which makes commit order equal position order.
CREATE TABLE ledger.head (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    position    bigint  NOT NULL,
    entry_hash  bytea   NOT NULL,
    frontier    bytea   NOT NULL
);
INSERT INTO ledger.head (id, position, entry_hash, frontier)
VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000', '\x');

-- Current version of every stream (for expected-version checks).
CREATE TABLE ledger.streams (
    stream   text   PRIMARY KEY,
    version  bigint NOT NULL
);

-- Every complete Merkle subtree: leaves [idx·2^level, (idx+1)·2^level).
CREATE TABLE ledger.merkle_nodes (
    level  smallint NOT NULL,
    idx    bigint   NOT NULL,
    hash   bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Idempotency keys, written in the same transaction as the events they produced.
CREATE TABLE ledger.idempotency (
    tenant          text        NOT NULL,
    key             text        NOT NULL,
    request_digest  bytea       NOT NULL,
    first_position  bigint      NOT NULL,
    last_position   bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);

-- Signed checkpoints (C2SP signed notes), one per published tree size.
CREATE TABLE ledger.checkpoints (
    tree_size   bigint      PRIMARY KEY CHECK (tree_size >= 1),
    root_hash   bytea       NOT NULL CHECK (length(root_hash) = 32),
    note        text        NOT NULL,
    key_name    text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Append-only enforcement, for every role including the owner.
CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER records_no_update BEFORE UPDATE OR DELETE ON ledger.records
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON ledger.records
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER nodes_no_update BEFORE UPDATE OR DELETE ON ledger.merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER nodes_no_truncate BEFORE TRUNCATE ON ledger.merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE OR DELETE ON ledger.checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON ledger.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER head_no_delete BEFORE DELETE ON ledger.head
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER head_no_truncate BEFORE TRUNCATE ON ledger.head
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- The service role: INSERT and SELECT only on the records (and the other
-- append-only tables); the head and stream versions are its small mutable state.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'glassbox_service') THEN
        CREATE ROLE glassbox_service NOLOGIN;
    END IF;
END;
$$;
GRANT USAGE ON SCHEMA ledger TO glassbox_service;
GRANT SELECT, INSERT ON ledger.records, ledger.merkle_nodes, ledger.checkpoints, ledger.idempotency TO glassbox_service;
GRANT SELECT, UPDATE ON ledger.head TO glassbox_service;
GRANT SELECT, INSERT, UPDATE ON ledger.streams TO glassbox_service;
