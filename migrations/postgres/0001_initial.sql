-- The schema of SQLite's version 8 (src/store/migrations.rs, all eight scripts), in PostgreSQL
-- types. Never edit this file once it has landed: add a new numbered migration instead (a unit
-- test pins every migration's checksum).
--
-- Times are `timestamptz` (not SQLite's RFC 3339 text): a database shared by several hosts is
-- compared against its own clock (`now()`, leases), and typed times need no parsing. The store
-- writes them with millisecond precision, as SQLite keeps them. `last_tick` keeps the schedule's
-- wall-clock time as if it were UTC, as on SQLite.

CREATE TABLE runs (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline         TEXT        NOT NULL,
    generation       BIGINT      NOT NULL,
    spec_json        TEXT        NOT NULL,
    spec_hash        TEXT        NOT NULL,
    phase            TEXT        NOT NULL,
    reason           TEXT,
    rounds           BIGINT      NOT NULL,
    owner_pid        BIGINT,
    owner_host       TEXT,
    owner_start_time BIGINT,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX runs_pipeline_id ON runs (pipeline, id);
CREATE INDEX runs_running ON runs (id) WHERE phase = 'Running';
CREATE INDEX runs_pipeline_generation ON runs (pipeline, generation, id);

CREATE TABLE jobs (
    run_id      BIGINT      NOT NULL REFERENCES runs (id),
    job_id      TEXT        NOT NULL,
    position    BIGINT      NOT NULL,
    phase       TEXT        NOT NULL,
    reason      TEXT,
    attempts    BIGINT      NOT NULL DEFAULT 0,
    lost        BIGINT      NOT NULL DEFAULT 0,
    exit_code   BIGINT,
    started_at  timestamptz,
    finished_at timestamptz,
    log_path    TEXT        NOT NULL,
    message     TEXT,
    PRIMARY KEY (run_id, job_id)
);

CREATE TABLE attempts (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id              BIGINT      NOT NULL,
    job_id              TEXT        NOT NULL,
    round               BIGINT      NOT NULL,
    number              BIGINT      NOT NULL,
    phase               TEXT        NOT NULL,
    reason              TEXT,
    pid                 BIGINT,
    pgid                BIGINT,
    process_start_time  BIGINT,
    exit_code           BIGINT,
    signal              BIGINT,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz,
    user_time_us        BIGINT,
    system_time_us      BIGINT,
    max_rss_kib         BIGINT,
    message             TEXT,
    max_rss_upper_bound BOOLEAN     NOT NULL DEFAULT FALSE,
    FOREIGN KEY (run_id, job_id) REFERENCES jobs (run_id, job_id)
);
CREATE INDEX attempts_run_job ON attempts (run_id, job_id);

CREATE TABLE events (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id BIGINT      NOT NULL REFERENCES runs (id),
    job_id TEXT,
    kind   TEXT        NOT NULL,
    reason TEXT,
    actor  TEXT,
    at     timestamptz NOT NULL,
    detail TEXT
);
CREATE INDEX events_run ON events (run_id, id);

CREATE TABLE pipelines (
    name            TEXT        PRIMARY KEY,
    generation      BIGINT      NOT NULL,
    spec_hash       TEXT        NOT NULL,
    source          TEXT        NOT NULL,
    deleted         BOOLEAN     NOT NULL DEFAULT FALSE,
    rerun_requested BOOLEAN     NOT NULL DEFAULT FALSE,
    last_tick       timestamptz,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          BIGINT      NOT NULL REFERENCES runs (id),
    round           BIGINT      NOT NULL,
    channel         TEXT        NOT NULL CHECK (channel IN ('email', 'command')),
    scope           TEXT        NOT NULL,
    target          TEXT        NOT NULL,
    payload         TEXT        NOT NULL,
    attempts        BIGINT      NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    sent_at         timestamptz,
    failed_at       timestamptz,
    last_error      TEXT,
    created_at      timestamptz NOT NULL,
    UNIQUE (run_id, round, channel, scope, target)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;

CREATE TABLE outbox_rounds (
    run_id    BIGINT      NOT NULL REFERENCES runs (id),
    round     BIGINT      NOT NULL,
    queued_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, round)
);

CREATE TABLE controller_settings (
    key        TEXT        PRIMARY KEY,
    value      TEXT        NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE generations (
    pipeline    TEXT        NOT NULL,
    generation  BIGINT      NOT NULL,
    revision    TEXT        NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (pipeline, generation)
);

CREATE TABLE apply_inventory (
    manifests_dir TEXT        NOT NULL,
    file          TEXT        NOT NULL,
    source        TEXT        NOT NULL,
    pipeline      TEXT        NOT NULL,
    content_hash  TEXT        NOT NULL,
    applied_at    timestamptz NOT NULL,
    PRIMARY KEY (manifests_dir, file)
);
CREATE INDEX apply_inventory_source ON apply_inventory (source, manifests_dir);

CREATE TABLE attempt_outputs (
    attempt_id BIGINT PRIMARY KEY REFERENCES attempts (id) ON DELETE CASCADE,
    run_id     BIGINT NOT NULL,
    job_id     TEXT   NOT NULL,
    outputs    TEXT   NOT NULL
);
CREATE INDEX attempt_outputs_by_run ON attempt_outputs (run_id);

CREATE TABLE rerun_params (
    pipeline TEXT PRIMARY KEY,
    params   TEXT NOT NULL
);
