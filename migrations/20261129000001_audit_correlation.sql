-- Audit search and evidence export by correlation ID (every record of one
-- request, job or workflow run): the same (key, position) shape as the other
-- audit_index filters, so a correlation's records are read in position order
-- without scanning the whole index.
CREATE INDEX audit_index_correlation ON projections.audit_index (correlation_id, position);
