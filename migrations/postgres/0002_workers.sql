-- Workers on several hosts (DESIGN 9): the workers that registered, the queue of attempts they
-- claim (with a lease and a fencing token each), the output they ship, and the controllers'
-- leader lease. Never edit this file once it has landed: add a new numbered migration instead.
--
-- Every lease is compared against the database's own clock (`now()`), never a host's.

CREATE TABLE workers (
    name         TEXT        PRIMARY KEY,
    host         TEXT        NOT NULL,
    pid          BIGINT      NOT NULL,
    labels       JSONB       NOT NULL DEFAULT '{}',
    slots        BIGINT      NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz
);

-- Fencing tokens: a claim takes a new one, and every write of the claimed attempt names it.
CREATE SEQUENCE fencing_tokens;

-- One row per attempt queued for a worker, from the leader's commit that records the attempt to
-- the commit that settles it. `labels` is the placement (`runOn`): a worker takes an item whose
-- labels its own contain.
CREATE TABLE work_items (
    attempt_id       BIGINT      PRIMARY KEY REFERENCES attempts (id) ON DELETE CASCADE,
    run_id           BIGINT      NOT NULL,
    job_id           TEXT        NOT NULL,
    labels           JSONB       NOT NULL DEFAULT '{}',
    state            TEXT        NOT NULL CHECK (state IN ('queued', 'claimed', 'done', 'lost')),
    cancel           BOOLEAN     NOT NULL DEFAULT FALSE,
    worker           TEXT,
    token            BIGINT,
    lease_expires_at timestamptz,
    result           TEXT,
    queued_at        timestamptz NOT NULL DEFAULT now(),
    claimed_at       timestamptz
);
CREATE INDEX work_items_queued ON work_items (attempt_id) WHERE state = 'queued';
CREATE INDEX work_items_claimed ON work_items (lease_expires_at) WHERE state = 'claimed';
CREATE INDEX work_items_worker ON work_items (worker) WHERE state = 'claimed';

-- A job's output as its worker shipped it, in order, per attempt.
CREATE TABLE log_chunks (
    attempt_id BIGINT NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    data       BYTEA  NOT NULL,
    PRIMARY KEY (attempt_id, seq)
);

-- The controllers' leader: one row, taken over when `expires_at` has passed; each holder gets a
-- higher epoch than the last.
CREATE TABLE leader (
    id         INT         PRIMARY KEY CHECK (id = 1),
    holder     TEXT        NOT NULL,
    epoch      BIGINT      NOT NULL,
    expires_at timestamptz NOT NULL
);
