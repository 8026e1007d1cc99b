-- backend-sub --sink: the table of stored points, applied at start (--sink-migrate true).
-- One row per unique point: a redelivered point is counted as a duplicate, not stored again.
CREATE TABLE IF NOT EXISTS {table} (
    device_id   text             NOT NULL,
    seq         bigint           NOT NULL,
    ts          timestamptz      NOT NULL,
    value       double precision NOT NULL,
    temperature double precision,
    humidity    double precision,
    received_at timestamptz      NOT NULL
);
CREATE INDEX IF NOT EXISTS {table}_device_seq ON {table} (device_id, seq);
-- Under TimescaleDB, a hypertable partitioned by the points' time.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('{table}', 'ts', if_not_exists => true, migrate_data => true);
    END IF;
END
$$;
