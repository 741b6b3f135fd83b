/*
 * Interop: the showcase's workflow shape run by the real troupe against the official MCP
 * reference server (@modelcontextprotocol/server-everything over stdio), installed with npm
 * by scripts/test. Without it the test is skipped, unless TROUPE_REQUIRE_INTEROP is set
 * (scripts/test sets it), when its absence is a failure.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <unistd.h>

#include "harness.h"

/* A test's world: the interop folder (the workflows' cwd), a fresh database, troupe. */
struct interop {
    char *folder;
    char *dir;
    char *db;
    char *troupe;
};

/* Skips the test when server-everything is not installed (fails under scripts/test). */
static struct interop interop_setup(void)
{
    struct interop it = {0};
    char *server = harness_source_path(
        "tests/interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    bool installed = access(server, R_OK) == 0;

    free(server);
    if (!installed) {
        cr_assert_null(getenv("TROUPE_REQUIRE_INTEROP"),
                       "server-everything is not installed (npm ci in tests/interop)");
        cr_skip_test("server-everything is not installed; run scripts/test");
    }
    it.folder = harness_source_path("tests/interop");
    it.dir = harness_tempdir();
    cr_assert_geq(asprintf(&it.db, "%s/troupe.db", it.dir), 0);
    it.troupe = harness_build_path("troupe");
    return it;
}

/* Checks the runs left (audit verify, replay) and that no server was left running. */
static void interop_release(struct interop *it)
{
    cr_assert_eq(harness_leftover_processes(NULL, "server-everything"), 0);
    harness_check_runs(it->troupe, it->db, it->folder);
    free(it->folder);
    free(it->dir);
    free(it->db);
    free(it->troupe);
}

Test(everything, echo_and_sum_through_two_personas)
{
    struct interop it = interop_setup();
    char *folder = it.folder, *db = it.db, *troupe = it.troupe;
    const char *argv[] = {troupe, "--db", db, "run", "everything.yaml", NULL};
    struct harness_result r;

    harness_run(argv, folder, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);

    char *echoed = harness_db_text(db, "SELECT value_json FROM context WHERE key = 'echoed'");
    cr_assert_str_eq(echoed, "\"Echo: hello from troupe\"");
    char *sum = harness_db_text(db, "SELECT value_json FROM context WHERE key = 'sum'");
    cr_assert(sum && strstr(sum, "5"), "%s", sum);
    char *final = harness_db_text(db, "SELECT value_json FROM context WHERE key = 'final'");
    cr_assert(final && strstr(final, "Echo: Echo: hello from troupe | ") && strstr(final, "5"),
              "%s", final);
    /* The server's own identity and version are on record from the handshake. */
    char *server_name = harness_db_text(
        db, "SELECT json_extract(payload_json, '$.message.result.serverInfo.name') FROM audit "
            "WHERE type = 'mcp.response' AND json_extract(payload_json, "
            "'$.message.result.serverInfo') IS NOT NULL LIMIT 1");
    cr_assert(server_name && strstr(server_name, "everything"), "%s", server_name);
    /* server-everything speaks only the handshake revisions over stdio: the agent's probe
     * (server/discover) is refused and it falls back to initialize. */
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type = 'mcp.request' AND "
                                    "json_extract(payload_json, '$.message.method') = "
                                    "'initialize'"),
                 2);
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type = 'mcp.request' AND "
                                    "json_extract(payload_json, '$.message.method') = "
                                    "'tools/call'"),
                 3);
    harness_result_release(&r);
    interop_release(&it);
    free(echoed);
    free(sum);
    free(final);
    free(server_name);
}

/* Whether the file holds needle anywhere (a raw scan: the database and its write-ahead log). */
static bool file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t n = strlen(needle), len = 0;
    char *data = NULL;
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        data = realloc(data, len + got);
        cr_assert_not_null(data);
        memcpy(data + len, chunk, got);
        len += got;
    }
    fclose(f);
    bool found = data && memmem(data, len, needle, n) != NULL;
    free(data);
    return found;
}

Test(everything, a_secret_echoed_by_a_server_never_reaches_the_database)
{
    const char *secret = "s3cr3t-Value-for-troupe-42";
    struct interop it = interop_setup();
    char *folder = it.folder, *db = it.db, *troupe = it.troupe;
    char *wal;
    cr_assert_geq(asprintf(&wal, "%s-wal", db), 0);
    const char *argv[] = {troupe, "--db", db, "run", "secret.yaml", NULL};
    struct harness_result r;

    setenv("TROUPE_TEST_SECRET", secret, 1);
    harness_run(argv, folder, 120000, &r);
    unsetenv("TROUPE_TEST_SECRET");
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_null(strstr(r.out, secret), "the secret was printed:\n%s", r.out);

    /* The server did get it, and said so: its reply is in the log, the value blanked out. */
    char *env = harness_db_text(db, "SELECT value_json FROM context WHERE key = 'env'");
    cr_assert(env && strstr(env, "API_TOKEN") && strstr(env, "[redacted:TROUPE_TEST_SECRET]"), "%s",
              env);
    /* The configuration on record keeps the reference, never the value. */
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type = 'agent.started' "
                                    "AND payload_json LIKE '%${env:TROUPE_TEST_SECRET}%'"),
                 1);
    cr_assert(!file_contains(db, secret) && !file_contains(wal, secret),
              "the secret's value is in the database files");

    harness_result_release(&r);
    free(env);
    free(wal);
    interop_release(&it);
}

Test(everything, a_fanout_keeps_calls_in_flight_and_a_timeout_cancels_by_the_protocol)
{
    struct interop it = interop_setup();
    char *folder = it.folder, *db = it.db, *troupe = it.troupe;
    const char *argv[] = {troupe, "--db", db, "run", "--credit", "8", "fanout.yaml", NULL};
    struct harness_result r;

    harness_run(argv, folder, 120000, &r);
    /* The long operation timed out: the run fails, after the fan-out succeeded. */
    cr_assert_eq(r.exit_code, 1, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);
    char *state = harness_db_text(db, "SELECT state FROM steps WHERE step_id = 'echoes'");
    cr_assert_str_eq(state, "succeeded");
    /* Every item's output, in order. */
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM steps, json_each(steps.output_json) j "
                                    "WHERE step_id = 'echoes' AND j.value = 'Echo: item ' || "
                                    "j.key"),
                 40);
    /* Several calls were in flight on the one session at once (the server answered them as
     * the SDK does, concurrently): some request was sent before the previous one's answer. */
    cr_assert_gt(harness_db_int(db, "WITH ev AS (SELECT seq, CASE type WHEN 'mcp.request' THEN 1 "
                                    "ELSE -1 END AS d FROM audit WHERE step_id = 'echoes' AND "
                                    "type IN ('mcp.request', 'mcp.response') AND "
                                    "json_extract(payload_json, '$.task') IS NOT NULL) "
                                    "SELECT max(n) FROM (SELECT sum(d) OVER (ORDER BY seq) AS n "
                                    "FROM ev)"),
                 1);
    /* The timed-out call was cancelled with notifications/cancelled naming its request. */
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit a WHERE a.step_id = 'slow' AND "
                                    "a.type = 'mcp.notification' AND "
                                    "json_extract(a.payload_json, '$.message.method') = "
                                    "'notifications/cancelled' AND "
                                    "json_extract(a.payload_json, '$.direction') = 'sent' AND "
                                    "json_extract(a.payload_json, '$.message.params.requestId') "
                                    "= (SELECT json_extract(b.payload_json, '$.message.id') FROM "
                                    "audit b WHERE b.step_id = 'slow' AND b.type = 'mcp.request' "
                                    "AND json_extract(b.payload_json, '$.message.method') = "
                                    "'tools/call')"),
                 1);
    char *error = harness_db_text(db, "SELECT error FROM steps WHERE step_id = 'slow'");
    cr_assert(error && strstr(error, "did not answer tools/call within 1000 ms"), "%s", error);
    harness_result_release(&r);
    free(error);
    free(state);
    interop_release(&it);
}

Test(everything, resource_and_prompt_steps_read_through_the_protocol_and_replay)
{
    struct interop it = interop_setup();
    char *folder = it.folder, *db = it.db, *troupe = it.troupe;
    const char *argv[] = {troupe, "--db", db, "run", "reads.yaml", NULL};
    struct harness_result r;

    harness_run(argv, folder, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);
    /* A resource's one text content is its output, saved to the context. */
    char *features = harness_db_text(db, "SELECT value_json FROM context WHERE key = 'features'");
    cr_assert(features && features[0] == '"' && strlen(features) > 100, "%s", features);
    /* Each item read its own resource of the template, in order. */
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM steps, json_each(steps.output_json) j "
                                    "WHERE step_id = 'dynamic' AND j.value LIKE 'Resource ' || "
                                    "(j.key + 1) || ': This is a plaintext resource%'"),
                 3);
    /* The prompt got its arguments as strings (7 became "7") and its text is the output. */
    char *question = harness_db_text(db, "SELECT value_json FROM context WHERE key = 'question'");
    cr_assert(question && strstr(question, "Lisbon, 7"), "%s", question);
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type = 'mcp.request' AND "
                                    "json_extract(payload_json, '$.message.method') = "
                                    "'resources/read'"),
                 4);
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type = 'mcp.request' AND "
                                    "json_extract(payload_json, '$.message.method') = "
                                    "'prompts/get' AND json_extract(payload_json, "
                                    "'$.message.params.arguments.state') = '7'"),
                 1);
    harness_result_release(&r);
    free(question);
    free(features);
    interop_release(&it); /* replay compares each read and the prompt with the record */
}
