/*
 * migrations.c: the store's schema as an ordered list of SQL scripts, one per version.
 * Applying them (one transaction each, PRAGMA user_version) is store.c's job; a released
 * script is never edited, a change is a new script appended at the end.
 */
#include "store-internal.h"

/* Version 1: runs, steps, the shared context with its history, the append-only audit log. */
static const char migration_1[] =
    /* 'TRPE': marks the file as troupe's, so another program's database is refused. */
    "PRAGMA application_id = 1414680645;\n"

    "CREATE TABLE runs (\n"
    "    id TEXT PRIMARY KEY NOT NULL,\n"
    "    workflow_name TEXT NOT NULL,\n"
    "    workflow_file TEXT,\n"
    "    plan_json TEXT NOT NULL,\n"
    "    plan_hash TEXT NOT NULL,\n"
    "    input_json TEXT NOT NULL,\n"
    "    status TEXT NOT NULL DEFAULT 'running'\n"
    "        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),\n"
    "    error TEXT,\n"
    "    started_at TEXT NOT NULL,\n"
    "    finished_at TEXT\n"
    ") STRICT;\n"
    "CREATE INDEX runs_by_start ON runs (started_at);\n"

    "CREATE TABLE steps (\n"
    "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    step_id TEXT NOT NULL,\n"
    "    persona TEXT,\n"
    "    state TEXT NOT NULL\n"
    "        CHECK (state IN ('pending', 'dispatched', 'succeeded', 'failed', 'skipped')),\n"
    "    attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),\n"
    "    output_json TEXT,\n"
    "    error TEXT,\n"
    "    started_at TEXT,\n"
    "    finished_at TEXT,\n"
    /* Order of first recording within the run: 1, 2, 3, ... */
    "    ord INTEGER NOT NULL CHECK (ord >= 1),\n"
    "    PRIMARY KEY (run_id, step_id),\n"
    "    UNIQUE (run_id, ord)\n"
    ") STRICT;\n"

    "CREATE TABLE context (\n"
    "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    key TEXT NOT NULL,\n"
    "    version INTEGER NOT NULL CHECK (version >= 1),\n"
    "    value_json TEXT NOT NULL,\n"
    "    step_id TEXT,\n"
    "    written_at TEXT NOT NULL,\n"
    "    PRIMARY KEY (run_id, key, version)\n"
    ") STRICT;\n"

    "CREATE TABLE audit (\n"
    "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    seq INTEGER NOT NULL CHECK (seq >= 1),\n"
    "    time TEXT NOT NULL,\n"
    "    step_id TEXT,\n"
    "    actor TEXT NOT NULL,\n"
    "    type TEXT NOT NULL,\n"
    "    payload_json TEXT NOT NULL,\n"
    "    prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),\n"
    "    hash TEXT NOT NULL CHECK (length(hash) = 64),\n"
    "    PRIMARY KEY (run_id, seq)\n"
    ") STRICT;\n"
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit\n"
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;\n"
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit\n"
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;\n";

/*
 * Version 2: the durable scheduler. Steps get the states of retries, approvals and
 * cancellation (SQLite cannot alter a CHECK constraint, so the table is rebuilt and its rows
 * copied); a run records the scheduler that drives it (pid, so `troupe resume` and
 * `troupe cancel` can tell a live scheduler from a dead one) and the options it was started
 * with (so a resumed run goes on the same way); approvals record each decision.
 */
static const char migration_2[] =
    "CREATE TABLE steps_v2 (\n"
    "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    step_id TEXT NOT NULL,\n"
    "    persona TEXT,\n"
    "    state TEXT NOT NULL\n"
    "        CHECK (state IN ('pending', 'ready', 'dispatched', 'retry-wait',\n"
    "                         'waiting-approval', 'succeeded', 'failed', 'skipped',\n"
    "                         'cancelled')),\n"
    "    attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),\n"
    "    output_json TEXT,\n"
    "    error TEXT,\n"
    "    started_at TEXT,\n"
    "    finished_at TEXT,\n"
    "    ord INTEGER NOT NULL CHECK (ord >= 1),\n"
    /* Milliseconds since the epoch at which a step in retry-wait is due, else NULL. */
    "    next_attempt_at INTEGER,\n"
    "    PRIMARY KEY (run_id, step_id),\n"
    "    UNIQUE (run_id, ord)\n"
    ") STRICT;\n"
    "INSERT INTO steps_v2 (run_id, step_id, persona, state, attempt, output_json, error,\n"
    "                      started_at, finished_at, ord)\n"
    "    SELECT run_id, step_id, persona, state, attempt, output_json, error, started_at,\n"
    "           finished_at, ord FROM steps;\n"
    "DROP TABLE steps;\n"
    "ALTER TABLE steps_v2 RENAME TO steps;\n"

    "ALTER TABLE runs ADD COLUMN scheduler_pid INTEGER;\n"
    "ALTER TABLE runs ADD COLUMN options_json TEXT;\n"

    "CREATE TABLE approvals (\n"
    "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    step_id TEXT NOT NULL,\n"
    "    decision TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),\n"
    "    actor TEXT NOT NULL,\n"
    "    comment TEXT,\n"
    "    decided_at TEXT NOT NULL,\n"
    "    PRIMARY KEY (run_id, step_id)\n"
    ") STRICT;\n";

/*
 * Version 3: the items of a for_each step. Each item that succeeded keeps its output (and,
 * when the step transforms the list with `output`, the tool's raw result), so a resumed run
 * calls only the items that had not finished, and the step's output is assembled from here
 * without holding every result in memory while the items run.
 */
static const char migration_3[] = "CREATE TABLE step_items (\n"
                                  "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
                                  "    step_id TEXT NOT NULL,\n"
                                  "    idx INTEGER NOT NULL CHECK (idx >= 0),\n"
                                  "    attempt INTEGER NOT NULL CHECK (attempt >= 1),\n"
                                  "    output_json TEXT NOT NULL,\n"
                                  "    result_json TEXT,\n"
                                  "    finished_at TEXT NOT NULL,\n"
                                  "    PRIMARY KEY (run_id, step_id, idx)\n"
                                  ") STRICT, WITHOUT ROWID;\n";

/*
 * Version 4: the same steps table, its state checked by comparisons instead of an IN list.
 * SQLite builds a temporary index for an IN list of more than two constants every time it
 * checks a row, which made every step update twice as slow (4.8 against 2.2 us).
 */
static const char migration_4[] =
    "CREATE TABLE steps_v4 (\n"
    "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    step_id TEXT NOT NULL,\n"
    "    persona TEXT,\n"
    "    state TEXT NOT NULL\n"
    "        CHECK (state = 'pending' OR state = 'ready' OR state = 'dispatched'\n"
    "               OR state = 'retry-wait' OR state = 'waiting-approval'\n"
    "               OR state = 'succeeded' OR state = 'failed' OR state = 'skipped'\n"
    "               OR state = 'cancelled'),\n"
    "    attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),\n"
    "    output_json TEXT,\n"
    "    error TEXT,\n"
    "    started_at TEXT,\n"
    "    finished_at TEXT,\n"
    "    ord INTEGER NOT NULL CHECK (ord >= 1),\n"
    "    next_attempt_at INTEGER,\n"
    "    PRIMARY KEY (run_id, step_id),\n"
    "    UNIQUE (run_id, ord)\n"
    ") STRICT;\n"
    "INSERT INTO steps_v4 (run_id, step_id, persona, state, attempt, output_json, error,\n"
    "                      started_at, finished_at, ord, next_attempt_at)\n"
    "    SELECT run_id, step_id, persona, state, attempt, output_json, error, started_at,\n"
    "           finished_at, ord, next_attempt_at FROM steps;\n"
    "DROP TABLE steps;\n"
    "ALTER TABLE steps_v4 RENAME TO steps;\n";

/*
 * Version 5: the ledger backs the records. Each run records its audit hash encoding (runs
 * from before are troupe-audit-v1, new ones v2: audit.c); the signatures made of a run's head
 * are kept (`troupe audit sign`), so verify and log can say what follows a signed head; and
 * rows that are never legitimately changed refuse it (a guard against accidents, not a
 * defence: triggers can be dropped; `troupe audit verify` checks the rows against the log).
 */
static const char migration_5[] =
    "ALTER TABLE runs ADD COLUMN audit_encoding INTEGER NOT NULL DEFAULT 1\n"
    "    CHECK (audit_encoding = 1 OR audit_encoding = 2);\n"

    "CREATE TABLE signatures (\n"
    "    run_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    seq INTEGER NOT NULL CHECK (seq >= 1),\n"
    "    head TEXT NOT NULL CHECK (length(head) = 64),\n"
    "    public_key TEXT NOT NULL,\n"
    "    signature TEXT NOT NULL,\n"
    "    signed_at TEXT NOT NULL,\n"
    "    PRIMARY KEY (run_id, seq, public_key)\n"
    ") STRICT;\n"

    "CREATE TRIGGER runs_no_delete BEFORE DELETE ON runs\n"
    "BEGIN SELECT RAISE(ABORT, 'runs are never deleted'); END;\n"
    "CREATE TRIGGER runs_fixed BEFORE UPDATE OF id, workflow_name, workflow_file, plan_json,\n"
    "    plan_hash, input_json, started_at, audit_encoding ON runs\n"
    "BEGIN SELECT RAISE(ABORT, 'a run''s identity, plan and inputs never change'); END;\n"
    "CREATE TRIGGER runs_final BEFORE UPDATE OF status, error, finished_at ON runs\n"
    "    WHEN OLD.status <> 'running'\n"
    "BEGIN SELECT RAISE(ABORT, 'a finished run''s outcome never changes'); END;\n"

    "CREATE TRIGGER steps_no_delete BEFORE DELETE ON steps\n"
    "BEGIN SELECT RAISE(ABORT, 'steps are never deleted'); END;\n"
    "CREATE TRIGGER steps_final BEFORE UPDATE ON steps\n"
    "    WHEN (OLD.state = 'succeeded' OR OLD.state = 'failed' OR OLD.state = 'skipped'\n"
    "          OR OLD.state = 'cancelled')\n"
    "BEGIN SELECT RAISE(ABORT, 'a step in a final state never changes'); END;\n"

    "CREATE TRIGGER context_no_update BEFORE UPDATE ON context\n"
    "BEGIN SELECT RAISE(ABORT, 'context writes are append-only'); END;\n"
    "CREATE TRIGGER context_no_delete BEFORE DELETE ON context\n"
    "BEGIN SELECT RAISE(ABORT, 'context writes are append-only'); END;\n"
    "CREATE TRIGGER step_items_no_update BEFORE UPDATE ON step_items\n"
    "BEGIN SELECT RAISE(ABORT, 'a finished item never changes'); END;\n"
    "CREATE TRIGGER step_items_no_delete BEFORE DELETE ON step_items\n"
    "BEGIN SELECT RAISE(ABORT, 'a finished item never changes'); END;\n"
    "CREATE TRIGGER approvals_no_update BEFORE UPDATE ON approvals\n"
    "BEGIN SELECT RAISE(ABORT, 'a decision never changes'); END;\n"
    "CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals\n"
    "BEGIN SELECT RAISE(ABORT, 'a decision never changes'); END;\n"
    "CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures\n"
    "BEGIN SELECT RAISE(ABORT, 'signatures are append-only'); END;\n"
    "CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures\n"
    "BEGIN SELECT RAISE(ABORT, 'signatures are append-only'); END;\n";

/*
 * Version 6: child runs (a `workflow` step runs its file as a run of its own). A child's link
 * to the parent run, its step, item (-1: none) and attempt; whether the parent has recorded
 * its end (settled: a later attempt starts a new child); and the outputs the child recorded at
 * its end (its run.finished event carries them too).
 */
static const char migration_6[] =
    "CREATE TABLE child_runs (\n"
    "    child_id TEXT PRIMARY KEY NOT NULL REFERENCES runs (id),\n"
    "    parent_id TEXT NOT NULL REFERENCES runs (id),\n"
    "    step_id TEXT NOT NULL,\n"
    "    item INTEGER NOT NULL CHECK (item >= -1),\n"
    "    attempt INTEGER NOT NULL CHECK (attempt >= 1),\n"
    "    settled INTEGER NOT NULL DEFAULT 0 CHECK (settled IN (0, 1)),\n"
    "    outputs_json TEXT\n"
    ") STRICT;\n"
    "CREATE INDEX child_runs_by_parent ON child_runs (parent_id, step_id, item);\n"
    "CREATE TRIGGER child_runs_fixed BEFORE UPDATE OF child_id, parent_id, step_id, item,\n"
    "    attempt ON child_runs\n"
    "BEGIN SELECT RAISE(ABORT, 'a child run''s link never changes'); END;\n"
    "CREATE TRIGGER child_runs_no_delete BEFORE DELETE ON child_runs\n"
    "BEGIN SELECT RAISE(ABORT, 'child runs are never deleted'); END;\n";

const char *const store__migrations[] = {
    migration_1, migration_2, migration_3, migration_4, migration_5, migration_6,
};

const int store__migration_count = (int)(sizeof(store__migrations) / sizeof(store__migrations[0]));
