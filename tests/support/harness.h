/*
 * Test harness for tests that run real troupe processes: run a program with a deadline and
 * capture its output, make temporary directories, query a run's SQLite database, and look
 * for processes left behind.
 */
#ifndef TROUPE_TEST_HARNESS_H
#define TROUPE_TEST_HARNESS_H

#include <sodium.h>
#include <stdbool.h>

struct harness_result {
    int exit_code; /* exit status, 128+signal if killed, -1 if it hit the deadline */
    char *out;     /* everything it wrote to stdout */
    char *err;     /* everything it wrote to stderr */
};

/* A program started in the background, its output collected into temporary files. */
struct harness_proc {
    int pid;
    char *out_path;
    char *err_path;
};

/* Starts argv (argv[0] a path) in cwd (or the current directory), in its own process group. */
void harness_spawn(const char *const *argv, const char *cwd, struct harness_proc *ret);
/* Waits for it up to timeout_ms (then kills its process group) and collects its output. */
void harness_finish(struct harness_proc *proc, int timeout_ms, struct harness_result *ret);
/* harness_spawn then harness_finish. */
void harness_run(const char *const *argv, const char *cwd, int timeout_ms,
                 struct harness_result *ret);
/* Polls sql (an integer query) until it yields at least want, up to timeout_ms; the value. */
long long harness_db_wait(const char *db_path, const char *sql, long long want, int timeout_ms);
void harness_result_release(struct harness_result *result);

/* $TROUPE_BUILD_DIR/rel and $TROUPE_SOURCE_DIR/rel. Caller frees. */
char *harness_build_path(const char *rel);
char *harness_source_path(const char *rel);
/* A new empty directory under /tmp. Caller frees (the directory stays for post-mortems). */
char *harness_tempdir(void);
/* Writes text to dir/name; returns the path (caller frees). */
char *harness_write_file(const char *dir, const char *name, const char *text);

/* The first column of the first row of sql as an integer (-1 if no row). */
long long harness_db_int(const char *db_path, const char *sql);
/* The same as text (NULL if no row or NULL); caller frees. */
char *harness_db_text(const char *db_path, const char *sql);

/*
 * Runs a checker of tests/audit (Node, test-only) on its arguments (arg2 may be NULL) and
 * asserts that it passes; returns what it printed (caller frees). Skips the test when the
 * checkers' npm packages are not installed, unless TROUPE_REQUIRE_INTEROP is set.
 */
char *harness_node_check(const char *script, const char *arg1, const char *arg2);

/* Number of lines in s. */
int harness_count_lines(const char *s);

/* A TCP port free on 127.0.0.1 right now. */
int harness_free_port(void);
/* Processes (other than this one) whose working directory is dir, or whose command line
 * contains needle (when not NULL). Waits up to 3 s for them to go. */
int harness_leftover_processes(const char *dir, const char *needle);

/* Pids of processes (other than this one) whose command line contains needle; at most max. */
int harness_find_pids(const char *needle, int *pids, int max);
/*
 * Checks the run's audit log: seq 1..n without a gap, each prev_hash the hash of the event
 * before, and each hash recomputed from the documented encoding. Returns the number of
 * events, or -1 (with the reason printed) if the chain is broken.
 */
long long harness_audit_verify(const char *db_path, const char *run_id);

/*
 * What every integration test checks of the runs it leaves in db: no sanitizer report in an
 * MCP server's stderr (it goes to the audit log), every run's audit chain verifies
 * (`troupe audit verify`), and every run that ended replays without divergence
 * (`troupe replay`). dir is the working directory for the commands.
 */
void harness_check_runs(const char *troupe, const char *db, const char *dir);

/* A test's world: a temporary directory, a database path in it, the troupe program. */
struct harness_env {
    char *dir;
    char *db; /* DIR/state/troupe.db, not created */
    char *troupe;
};

/* A temporary directory for a test; sets XDG_CONFIG_HOME to DIR/config (the token store). */
struct harness_env harness_env_new(void);
/* Checks the runs the test left (harness_check_runs) and that no process was left running
 * in the directory, then frees the paths (the directory stays, for post-mortems). */
void harness_env_release(struct harness_env *env);

/* `troupe approve latest STEP --as AS --comment COMMENT` (with --reject if reject) in env's
 * directory; asserts that it exits 0. */
void harness_approve(const struct harness_env *env, const char *step, const char *as,
                     const char *comment, bool reject);
/* Waits up to 30 s until step waits for approval in db; asserts that it does. */
void harness_wait_for_approval(const char *db, const char *step);

/*
 * Runs sql on the database as an attacker would, every trigger dropped first when
 * drop_triggers (then sql must succeed). Asserts that a change that succeeds changed a row.
 * Returns sqlite's code (a trigger's refusal when the triggers stand).
 */
int harness_db_tamper(const char *db_path, bool drop_triggers, const char *sql);

/* harness_db_int and harness_db_text with the SQL formatted printf-style. */
long long harness_query_int(const char *db, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
char *harness_query_text(const char *db, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * One field of the audit log's documented hash encoding (its length as 8 bytes big-endian,
 * then its bytes), written here independently of runtime/store so tests check the format.
 */
void harness_hash_field(crypto_hash_sha256_state *state, const char *field);
/* The same in troupe-audit-v2: a tag byte (0 for NULL, then nothing; 1 for a text) first. */
void harness_hash_field_v2(crypto_hash_sha256_state *state, const char *field);

/* The chain hash of one event in troupe-audit-v2 (encoding 2) or v1, from the documented
 * encoding, independently of runtime/store. */
void harness_audit_event_hash(int encoding, const char *prev, const char *run, long long seq,
                              const char *time, const char *step, const char *actor,
                              const char *type, const char *payload, char hash[65]);
/* Recomputes the hashes of run's whole chain in encoding (1 or 2), as a forger who can compute
 * them would (the audit table's triggers must be dropped first). */
void harness_audit_rechain(const char *db_path, const char *run, int encoding);

#endif
