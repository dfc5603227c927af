"""Schema migrations, applied in order at start; `PRAGMA user_version` records how many ran.

Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    """
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
        percentage REAL NOT NULL DEFAULT 0,
        current_step TEXT,
        partial_output TEXT,
        model TEXT,
        usage TEXT,
        lease_token TEXT,
        worker_id TEXT,
        seq INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC);
    CREATE INDEX jobs_status_created ON jobs (status, created_at);
    """,
    # 2: users (only a hash of each API token), users' own provider keys (AES-GCM ciphertext, deleted when the
    # job ends), and an index for per-user active-job counts and history filters.
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE job_secrets (
        job_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX jobs_user_status ON jobs (user_id, status);
    """,
]

# 3: the job lifecycle (leases, cancel, retries, fallback, idempotency, expiry). Appended, never edited.
MIGRATIONS.append(
    """
    ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN ready_at REAL;
    ALTER TABLE jobs ADD COLUMN expires_at REAL;
    ALTER TABLE jobs ADD COLUMN history TEXT;
    ALTER TABLE jobs ADD COLUMN model_index INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN retry_of TEXT;
    CREATE INDEX jobs_status_lease ON jobs (status, lease_expires_at);
    CREATE TABLE idempotency_keys (
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        job_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    """
)

# Queue position: `queue_ahead` counts queued jobs by their effective start (ready time minus the priority head
# start); an expression index lets that COUNT read a slice of this index instead of scanning every queued row.
# The 10.0 is queue.PRIORITY_STEP_SECONDS, inlined because an index cannot take a bound parameter.
MIGRATIONS.append(
    """
    CREATE INDEX jobs_queue_order ON jobs (status, (COALESCE(ready_at, created_at) - priority * 10.0));
    """
)

# The queue gives a deferred job (a retry backing off: requeued with ready_at in the future, so ready_at >
# updated_at) no priority head start: it is scored at its due time. The position must count the same way.
# Partial on queued rows: a worker's progress writes (which bump updated_at) never touch this index.
MIGRATIONS.append(
    """
    DROP INDEX IF EXISTS jobs_queue_order;
    CREATE INDEX jobs_queue_order ON jobs (
        status, (COALESCE(ready_at, created_at) - CASE WHEN ready_at > updated_at THEN 0 ELSE priority * 10.0 END)
    ) WHERE status = 'queued';
    """
)

# 6: counts kept by triggers, so a submit reads two numbers instead of counting rows. `queue_size` is the number
# of queued jobs: a new job's position is then that minus the jobs queued at or after it (a short tail of the
# jobs_queue_order index, where counting the jobs ahead read a slice as long as the queue). `user_active` is
# each user's queued + processing jobs, for the MAX_ACTIVE_JOBS check. The triggers run inside the statement
# that changes a job, so the counts are exact; a failed statement rolls them back with it. The insert trigger
# runs BEFORE, so a RETURNING clause on the insert already sees the new job counted.
MIGRATIONS.append(
    """
    CREATE TABLE queue_size (id INTEGER PRIMARY KEY CHECK (id = 1), queued INTEGER NOT NULL);
    INSERT INTO queue_size (id, queued) VALUES (1, (SELECT COUNT(*) FROM jobs WHERE status = 'queued'));
    CREATE TABLE user_active (user_id TEXT PRIMARY KEY, n INTEGER NOT NULL);
    INSERT INTO user_active (user_id, n)
        SELECT user_id, COUNT(*) FROM jobs WHERE status IN ('queued', 'processing') GROUP BY user_id;
    CREATE TRIGGER jobs_count_insert BEFORE INSERT ON jobs BEGIN
        UPDATE queue_size SET queued = queued + 1 WHERE NEW.status = 'queued';
        INSERT INTO user_active (user_id, n) SELECT NEW.user_id, 1 WHERE NEW.status IN ('queued', 'processing')
            ON CONFLICT (user_id) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER jobs_count_status AFTER UPDATE OF status ON jobs WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE queue_size SET queued = queued + (NEW.status = 'queued') - (OLD.status = 'queued')
            WHERE (NEW.status = 'queued') != (OLD.status = 'queued');
        INSERT INTO user_active (user_id, n)
            SELECT NEW.user_id, (NEW.status IN ('queued', 'processing')) - (OLD.status IN ('queued', 'processing'))
            WHERE (NEW.status IN ('queued', 'processing')) != (OLD.status IN ('queued', 'processing'))
            ON CONFLICT (user_id) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE queue_size SET queued = queued - 1 WHERE OLD.status = 'queued';
        UPDATE user_active SET n = n - 1 WHERE user_id = OLD.user_id AND OLD.status IN ('queued', 'processing');
    END;
    """
)


# 7: which provider and model the job's latest attempt runs on (its fallback-chain step), as JSON
# {"provider", "model"}. The claim writes it, so the sweeper can name them in a `worker_lost` history entry.
MIGRATIONS.append(
    """
    ALTER TABLE jobs ADD COLUMN running_on TEXT;
    """
)

# 8: whether the job was submitted with the user's own provider key. The sealed key is deleted when the job ends, so
# without this a retry could not tell, and would run on the server's key: someone else would pay.
MIGRATIONS.append(
    """
    ALTER TABLE jobs ADD COLUMN own_provider_key INTEGER NOT NULL DEFAULT 0;
    """
)

# 9: browser sessions signed out before their cookie expires (DELETE /api/session). A cookie whose session id is
# here is refused even though its signature holds; a row is useless once `expires_at` (the cookie's own expiry)
# passes, and is purged then.
MIGRATIONS.append(
    """
    CREATE TABLE signed_out_sessions (
        session_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX signed_out_sessions_expiry ON signed_out_sessions (expires_at);
    """
)

# 10: webhooks (service/webhooks/). A job's `webhook` ({"url", "events"} as JSON) is written with the job. The outbox,
# `webhook_deliveries`, gets its row from a trigger on the very statement that writes the job's terminal status, so
# no path that ends a job (a worker's finish, a cancel, the sweeper, expiry) can end it without its delivery, and a
# crash can't fall between the two. The row's id is the `webhook-id` every attempt sends, one per job and event.
# A claim moves `next_at` ahead by a lease and sets `claim_token`: a worker that dies mid-delivery leaves a row that
# comes due again by itself. `webhook_secrets`: each user's signing secret, sealed with the server key (and the one
# it replaced, which keeps signing for WEBHOOK_SECRET_OVERLAP after a rotation).
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
        next_at REAL NOT NULL,
        claim_token TEXT,
        occurred_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        delivered_at REAL,
        responses TEXT
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE status = 'pending';
    CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
    CREATE TABLE webhook_secrets (
        user_id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        previous BLOB,
        rotated_at REAL,
        created_at REAL NOT NULL
    );
    CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON jobs
        WHEN NEW.webhook IS NOT NULL AND OLD.status IS NOT NEW.status
            AND NEW.status IN ('completed', 'failed', 'cancelled', 'expired')
            AND EXISTS (SELECT 1 FROM json_each(NEW.webhook, '$.events') WHERE value = NEW.status)
    BEGIN
        INSERT INTO webhook_deliveries (id, job_id, user_id, event, url, status, next_at, occurred_at, updated_at)
            VALUES ('msg_' || replace(NEW.id, '-', '') || '_' || NEW.status, NEW.id, NEW.user_id, 'job.' || NEW.status,
                    json_extract(NEW.webhook, '$.url'), 'pending', NEW.updated_at, NEW.updated_at, NEW.updated_at)
            ON CONFLICT (id) DO NOTHING;
    END;
    CREATE TRIGGER jobs_webhook_purge AFTER DELETE ON jobs WHEN OLD.webhook IS NOT NULL BEGIN
        DELETE FROM webhook_deliveries WHERE job_id = OLD.id;
    END;
    """
)

# 11: operators and what they did. `users.is_operator` opens /admin and /api/admin/* to a user (`aijobs users create
# NAME --operator`); `operator_actions` records every retry, cancel and purge an operator made, with who made it
# (the name as it was then, too). `jobs_completed_at`: the operator page's per-minute charts and its failed list read
# the last hour of finished jobs by completed_at (PostgreSQL has had its partial jobs_completed index from the start).
MIGRATIONS.append(
    """
    ALTER TABLE users ADD COLUMN is_operator INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE operator_actions (
        id TEXT PRIMARY KEY,
        acted_at REAL NOT NULL,
        operator_id TEXT NOT NULL,
        operator_name TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('retry', 'cancel', 'purge')),
        job_id TEXT,
        job_user_id TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX operator_actions_acted ON operator_actions (acted_at);
    CREATE INDEX jobs_completed_at ON jobs (completed_at);
    """
)


# 12: the submitting request's id and W3C traceparent (service/tracing.py), written with the job by the submit's own
# insert. A spell's queue entry carries them to its worker; when that spell is lost (its worker died and the sweeper
# takes the job over, or Redis lost the entry and the reconciler enqueues it again) the next spell's entry gets them
# from here, so its log lines and trace still lead back to the request. NULL for jobs submitted before.
MIGRATIONS.append(
    """
    ALTER TABLE jobs ADD COLUMN request_id TEXT;
    ALTER TABLE jobs ADD COLUMN traceparent TEXT;
    """
)


def statements(sql: str) -> list[str]:
    """A migration's statements, split on the `;` that end one (not those inside a trigger's BEGIN … END)."""
    out: list[str] = []
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                out.append(pending.strip().rstrip(";").strip())
            pending = ""
    if pending.strip(" \n\t;"):
        out.append(pending.strip().rstrip(";").strip())
    return out
