"""The PostgreSQL schema, as numbered migrations applied by `aijobs migrate` (never by a web or worker start).

`aijobs_schema.version` records how many ran. Append new migrations; never edit one that has shipped.

The same tables as the SQLite store, but not its one-row `queue_size` counter: a row that every submit of every
user updates serializes all submits under PostgreSQL's row locks. The queued count is spread over 64 rows of
`queue_count` instead (a job counts in the row its id hashes to). `user_active` stays, one row per user: the
submit statement itself adds to its user's row (an upsert that only succeeds under the cap, which makes the cap
exact under concurrency), and a trigger takes one off when a job leaves queued/processing. Only a user's own
submits and job ends touch their row. JSON stays TEXT (what the Python side writes and reads, no codec per
connection); statements cast to jsonb where they look inside it.
"""

from __future__ import annotations

# The queue order of a queued job (queue.py's score: ready time minus the priority head start, except a deferred
# retry, scored at its due time). 10.0 is queue.PRIORITY_STEP_SECONDS. Kept as a stored generated column, `queue_at`,
# rather than an expression index: an expression index over updated_at makes every progress write (which moves
# updated_at) a non-HOT update that writes a new entry into every index of the table, while the column's value does
# not change for a running job, so a checkpoint stays a HOT update. Counting the jobs ahead reads its index.
QUEUE_AT = (
    "COALESCE(ready_at, created_at) - CASE WHEN ready_at > updated_at THEN 0.0::float8 ELSE priority * 10.0::float8 END"
)


def queue_key(alias: str = "") -> str:
    return f"{alias}.queue_at" if alias else "queue_at"


MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued','processing','completed','failed','cancelled','expired')),
        priority INTEGER NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
        input TEXT NOT NULL,
        result TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        percentage DOUBLE PRECISION NOT NULL DEFAULT 0,
        current_step TEXT,
        partial_output TEXT,
        model TEXT,
        usage TEXT,
        lease_token TEXT,
        worker_id TEXT,
        seq BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        completed_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        lease_expires_at DOUBLE PRECISION,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        ready_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        history TEXT,
        model_index INTEGER NOT NULL DEFAULT 0,
        retry_of TEXT,
        running_on TEXT,
        own_provider_key BOOLEAN NOT NULL DEFAULT FALSE,
        queue_at DOUBLE PRECISION GENERATED ALWAYS AS ({QUEUE_AT}) STORED
    ) WITH (fillfactor = 70);  -- room on each page for a job's next row versions: updates stay HOT (no index writes)
    -- history pages: newest first with an (created_at, id) cursor
    CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC, id DESC);
    CREATE INDEX jobs_user_status ON jobs (user_id, status);
    CREATE INDEX jobs_queue_order ON jobs (queue_at) WHERE status = 'queued';
    CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'processing';
    CREATE INDEX jobs_completed ON jobs (completed_at) WHERE completed_at IS NOT NULL;
    CREATE INDEX jobs_status_created ON jobs (status, created_at);
    CREATE INDEX jobs_type_completed ON jobs (type, completed_at DESC) WHERE status = 'completed';
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        token_hash TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE job_secrets (
        job_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE idempotency_keys (
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        job_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
    -- browser sessions signed out before their cookie expires (users.py: sign_out / signed_out)
    CREATE TABLE signed_out_sessions (
        session_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX signed_out_sessions_expiry ON signed_out_sessions (expires_at);
    -- each user's queued + processing jobs: +1 by the submit statement (PostgresJobStore.create_ranked), -1 here
    CREATE TABLE user_active (user_id TEXT PRIMARY KEY, n INTEGER NOT NULL);
    CREATE FUNCTION aijobs_user_active_left() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            UPDATE user_active SET n = n - 1 WHERE user_id = OLD.user_id;
        ELSE
            INSERT INTO user_active AS u (user_id, n)
                VALUES (NEW.user_id, CASE WHEN NEW.status IN ('queued', 'processing') THEN 1 ELSE -1 END)
                ON CONFLICT (user_id) DO UPDATE SET n = u.n + EXCLUDED.n;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_active_status AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN ((OLD.status IN ('queued', 'processing')) IS DISTINCT FROM (NEW.status IN ('queued', 'processing')))
        EXECUTE FUNCTION aijobs_user_active_left();
    CREATE TRIGGER jobs_active_delete AFTER DELETE ON jobs FOR EACH ROW
        WHEN (OLD.status IN ('queued', 'processing'))
        EXECUTE FUNCTION aijobs_user_active_left();
    -- how many jobs are queued, spread over 64 rows (a job counts in the row its id hashes to): a new job's queue
    -- position is this total minus the short tail of jobs queued at or after it, where counting the jobs ahead
    -- would read the whole queue on every submit; no one row takes every submit's update
    CREATE TABLE queue_count (shard SMALLINT PRIMARY KEY, n BIGINT NOT NULL);
    INSERT INTO queue_count (shard, n) SELECT g, 0 FROM generate_series(0, 63) AS g;
    CREATE FUNCTION aijobs_queue_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE queue_count SET n = n + 1 WHERE shard = hashtext(NEW.id) & 63;
        ELSIF TG_OP = 'DELETE' THEN
            UPDATE queue_count SET n = n - 1 WHERE shard = hashtext(OLD.id) & 63;
        ELSE
            UPDATE queue_count SET n = n + CASE WHEN NEW.status = 'queued' THEN 1 ELSE -1 END
                WHERE shard = hashtext(NEW.id) & 63;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_queued_insert AFTER INSERT ON jobs FOR EACH ROW
        WHEN (NEW.status = 'queued') EXECUTE FUNCTION aijobs_queue_count();
    CREATE TRIGGER jobs_queued_status AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN ((OLD.status = 'queued') IS DISTINCT FROM (NEW.status = 'queued')) EXECUTE FUNCTION aijobs_queue_count();
    CREATE TRIGGER jobs_queued_delete AFTER DELETE ON jobs FOR EACH ROW
        WHEN (OLD.status = 'queued') EXECUTE FUNCTION aijobs_queue_count();
    """,
]

# 2: webhooks, as SQLite's migration 10 (its comment says why a trigger writes the outbox row). The same statement that
# writes a job's terminal status inserts its delivery; deleting the job (purge) deletes its deliveries.
MIGRATIONS.append(
    """
    ALTER TABLE jobs ADD COLUMN webhook TEXT;
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL,
        claim_token TEXT,
        occurred_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION,
        responses TEXT
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE status = 'pending';
    CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
    CREATE TABLE webhook_secrets (
        user_id TEXT PRIMARY KEY,
        sealed BYTEA NOT NULL,
        previous BYTEA,
        rotated_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE FUNCTION aijobs_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            DELETE FROM webhook_deliveries WHERE job_id = OLD.id;
        ELSE
            INSERT INTO webhook_deliveries (id, job_id, user_id, event, url, status, next_at, occurred_at, updated_at)
                VALUES ('msg_' || replace(NEW.id, '-', '') || '_' || NEW.status, NEW.id, NEW.user_id,
                        'job.' || NEW.status, NEW.webhook::jsonb ->> 'url', 'pending', NEW.updated_at, NEW.updated_at,
                        NEW.updated_at)
                ON CONFLICT (id) DO NOTHING;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN (NEW.webhook IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
              AND NEW.status IN ('completed', 'failed', 'cancelled', 'expired')
              AND jsonb_exists(NEW.webhook::jsonb -> 'events', NEW.status))
        EXECUTE FUNCTION aijobs_webhook_outbox();
    CREATE TRIGGER jobs_webhook_purge AFTER DELETE ON jobs FOR EACH ROW
        WHEN (OLD.webhook IS NOT NULL) EXECUTE FUNCTION aijobs_webhook_outbox();
    """
)

# 3: operators and what they did (SQLite's migration 11): `users.is_operator` opens /admin and /api/admin/* to a user;
# `operator_actions` records every retry, cancel and purge an operator made, with who made it. The page's charts read
# finished jobs by completed_at through jobs_completed (migration 1).
MIGRATIONS.append(
    """
    ALTER TABLE users ADD COLUMN is_operator BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE TABLE operator_actions (
        id TEXT PRIMARY KEY,
        acted_at DOUBLE PRECISION NOT NULL,
        operator_id TEXT NOT NULL,
        operator_name TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('retry', 'cancel', 'purge')),
        job_id TEXT,
        job_user_id TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX operator_actions_acted ON operator_actions (acted_at);
    """
)

# 4: the submitting request's id and traceparent (SQLite's migration 12, whose comment says why). Nullable and without
# a default, so adding them rewrites no rows.
MIGRATIONS.append(
    """
    ALTER TABLE jobs ADD COLUMN request_id TEXT;
    ALTER TABLE jobs ADD COLUMN traceparent TEXT;
    """
)
