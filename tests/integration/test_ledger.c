/*
 * The ledger backs what troupe shows: a real run leaves a row in every table that `show`,
 * `runs` and `context` read (runs, steps, step_items, context); each field of each is then
 * changed in a copy of the database, with the tables' triggers in place (they refuse what is
 * never legitimately changed) and with them dropped, as an attacker would. `troupe audit
 * verify` must fail naming the table, key and field; show and context must refuse the run,
 * runs must flag it, log must say so.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static struct harness_env env;
static char *run;

static void run_ledger_workflow(void)
{
    struct harness_result r;
    char *workflow = harness_source_path("tests/workflows/ledger.yaml");
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", workflow, NULL};

    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    free(workflow);
    run = harness_db_text(env.db, "SELECT id FROM runs");
    cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM step_items"), 3);
    cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM context"), 3);
    cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM steps WHERE error IS NOT NULL"),
                 1);
}

/* Runs sql on a fresh copy of the database; returns the copy's path, or NULL when sqlite
 * refused the change (a trigger). */
static char *tampered_copy(const char *name, const char *sql, bool drop_triggers)
{
    char *copy, *command;

    cr_assert_geq(asprintf(&copy, "%s/%s-%s.db", env.dir, name, drop_triggers ? "raw" : "guarded"),
                  0);
    cr_assert_geq(
        asprintf(&command, "rm -f '%s' && sqlite3 '%s' \".backup '%s'\"", copy, env.db, copy), 0);
    cr_assert_eq(system(command), 0, "%s", command);
    free(command);
    int rc = harness_db_tamper(copy, drop_triggers, sql);
    if (rc != SQLITE_OK) {
        free(copy);
        return NULL;
    }
    return copy;
}

static void troupe_on(const char *db, struct harness_result *r, const char *a, const char *b,
                      const char *c)
{
    const char *argv[] = {env.troupe, "--db", db, a, b, c, NULL};
    harness_run(argv, env.dir, 30000, r);
}

/* Every reader sees that db's records disagree with the log: verify names `named`. */
static void expect_caught(const char *db, const char *named)
{
    struct harness_result r;

    troupe_on(db, &r, "audit", "verify", run);
    cr_assert_eq(r.exit_code, 1, "verify passed a tampered %s:\n%s%s", named, r.out, r.err);
    cr_assert(strstr(r.out, named), "verify does not name '%s':\n%s", named, r.out);
    harness_result_release(&r);

    troupe_on(db, &r, "show", run, NULL);
    cr_assert_eq(r.exit_code, 1, "show presented a tampered %s:\n%s", named, r.out);
    cr_assert(strstr(r.err, "refusing to show run"), "%s", r.err);
    cr_assert(strstr(r.err, named), "show does not name '%s':\n%s", named, r.err);
    cr_assert_eq(strstr(r.out, "STEP") == NULL, 1, "show printed its table:\n%s", r.out);
    harness_result_release(&r);

    troupe_on(db, &r, "context", run, NULL);
    cr_assert_eq(r.exit_code, 1, "context presented a tampered %s:\n%s", named, r.out);
    cr_assert(strstr(r.err, "refusing to show run"), "%s", r.err);
    cr_assert_str_empty(r.out);
    harness_result_release(&r);

    troupe_on(db, &r, "runs", NULL, NULL);
    cr_assert_eq(r.exit_code, 1, "runs did not flag a tampered %s:\n%s", named, r.out);
    cr_assert(strstr(r.out, "UNTRUSTED"), "%s", r.out);
    harness_result_release(&r);

    troupe_on(db, &r, "log", run, NULL);
    cr_assert_eq(r.exit_code, 1, "log did not flag a tampered %s", named);
    cr_assert(strstr(r.err, named), "log does not name '%s':\n%s", named, r.err);
    harness_result_release(&r);
}

struct tamper_case {
    const char *name;
    const char *sql;   /* RUN stands for the run id */
    const char *named; /* what verify must name (RUN the run id) */
    bool guarded;      /* the tables' triggers refuse it */
};

static const struct tamper_case cases[] = {
    /* runs: everything show and runs print */
    {"workflow", "UPDATE runs SET workflow_name = 'forged'", "runs[RUN].workflow_name", true},
    {"file", "UPDATE runs SET workflow_file = 'forged.yaml'", "runs[RUN].workflow_file", true},
    {"status", "UPDATE runs SET status = 'failed'", "runs[RUN].status", true},
    {"run-error", "UPDATE runs SET error = 'forged'", "runs[RUN].error", true},
    {"started", "UPDATE runs SET started_at = '2020-01-01T00:00:00.000Z'", "runs[RUN].started_at",
     true},
    {"finished", "UPDATE runs SET finished_at = '2030-01-01T00:00:00.000Z'",
     "runs[RUN].finished_at", true},
    {"plan-hash", "UPDATE runs SET plan_hash = substr(plan_hash, 2) || '0'", "runs[RUN].plan_hash",
     true},
    {"plan", "UPDATE runs SET plan_json = '{}'", "runs[RUN].plan_json", true},
    {"input", "UPDATE runs SET input_json = '{\"who\":\"mallory\"}'", "runs[RUN].input_json", true},
    {"running", "UPDATE runs SET status = 'running', finished_at = NULL, error = NULL",
     "runs[RUN].status", true},
    /* The options resume acts on (attempts, approvals): a resume may change them, so no
     * trigger guards them, and the log does. */
    {"options",
     "UPDATE runs SET options_json = replace(options_json, '\"approve\":[', "
     "'\"approve\":[\"greet\",')",
     "runs[RUN].options_json", false},
    /* steps: what show prints of each */
    {"state", "UPDATE steps SET state = 'failed' WHERE step_id = 'greet'", "steps[greet].state",
     true},
    {"skipped-state", "UPDATE steps SET state = 'succeeded' WHERE step_id = 'never'",
     "steps[never].state", true},
    {"persona", "UPDATE steps SET persona = 'mallory' WHERE step_id = 'greet'",
     "steps[greet].persona", true},
    {"attempt", "UPDATE steps SET attempt = 3 WHERE step_id = 'greet'", "steps[greet].attempt",
     true},
    {"output", "UPDATE steps SET output_json = '\"Goodbye\"' WHERE step_id = 'greet'",
     "steps[greet].output_json", true},
    {"step-error", "UPDATE steps SET error = 'forged' WHERE step_id = 'broken'",
     "steps[broken].error", true},
    {"step-error-null", "UPDATE steps SET error = NULL WHERE step_id = 'broken'",
     "steps[broken].error", true},
    {"step-started",
     "UPDATE steps SET started_at = '2020-01-01T00:00:00.000Z' WHERE step_id = "
     "'greet'",
     "steps[greet].started_at", true},
    {"step-finished",
     "UPDATE steps SET finished_at = '2030-01-01T00:00:00.000Z' WHERE step_id = "
     "'each'",
     "steps[each].finished_at", true},
    {"step-deleted", "DELETE FROM steps WHERE step_id = 'broken'", "steps[broken]", true},
    {"step-added",
     "INSERT INTO steps (run_id, step_id, state, attempt, ord) VALUES ('RUN', 'ghost', "
     "'pending', 0, 99)",
     "steps[ghost].state", false},
    /* step_items: the items show counts */
    {"item-output", "UPDATE step_items SET output_json = '\"z\"' WHERE idx = 1",
     "step_items[each #1].output_json", true},
    {"item-attempt", "UPDATE step_items SET attempt = 2 WHERE idx = 1",
     "step_items[each #1].attempt", true},
    {"item-deleted", "DELETE FROM step_items WHERE idx = 2", "step_items[each #2]", true},
    {"item-added",
     "INSERT INTO step_items VALUES ('RUN', 'each', 3, 1, '\"d\"', NULL, "
     "'2026-01-01T00:00:00.000Z')",
     "step_items[each #3]", false},
    /* context: what context prints */
    {"value", "UPDATE context SET value_json = '\"Goodbye\"' WHERE key = 'greeting'",
     "context[greeting v1].value_json", true},
    {"writer", "UPDATE context SET step_id = 'broken' WHERE key = 'greeting'",
     "context[greeting v1].step_id", true},
    {"context-deleted", "DELETE FROM context WHERE key = 'total'", "context[total]", true},
    {"context-added",
     "INSERT INTO context VALUES ('RUN', 'greeting', 2, '\"Goodbye\"', 'greet', "
     "'2026-01-01T00:00:00.000Z')",
     "context[greeting v2]", false},
};

/* pattern with RUN replaced by the run's id. Caller frees. */
static char *with_run(const char *pattern)
{
    const char *at = strstr(pattern, "RUN");
    char *out;
    if (!at)
        return strdup(pattern);
    cr_assert_geq(asprintf(&out, "%.*s%s%s", (int)(at - pattern), pattern, run, at + 3), 0);
    return out;
}

Test(ledger, every_field_show_runs_and_context_read_is_backed_by_the_log, .timeout = 300)
{
    env = harness_env_new();
    run_ledger_workflow();

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct tamper_case *c = &cases[i];
        char *sql = with_run(c->sql), *named = with_run(c->named);

        /* The guard: a change never legitimately made is refused while the triggers stand. */
        char *guarded = tampered_copy(c->name, sql, false);
        if (c->guarded) {
            cr_assert_null(guarded, "%s: the triggers let '%s' through", c->name, sql);
        } else {
            cr_assert_not_null(guarded);
            expect_caught(guarded, named);
        }
        free(guarded);

        /* The defence: with the triggers dropped, the ledger still catches it. */
        char *raw = tampered_copy(c->name, sql, true);
        expect_caught(raw, named);
        free(raw);
        free(sql);
        free(named);
    }
    free(run);
    harness_env_release(&env);
}

/* The untouched run is shown, and says what the readers print. */
Test(ledger, an_untouched_run_is_shown)
{
    struct harness_result r;

    env = harness_env_new();
    run_ledger_workflow();
    troupe_on(env.db, &r, "show", run, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "3 items done"), "%s", r.out);
    harness_result_release(&r);
    troupe_on(env.db, &r, "context", run, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "greeting = \"Hello, world!\""), "%s", r.out);
    harness_result_release(&r);
    troupe_on(env.db, &r, "runs", NULL, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "succeeded"), "%s", r.out);
    harness_result_release(&r);
    free(run);
    harness_env_release(&env);
}

/* Text that a terminal would obey: ESC, CR, a line or paragraph separator, a bidi override,
 * or a line forged to look like troupe's own. */
static void expect_inert(const char *what, const char *text)
{
    cr_assert_null(strchr(text, '\x1b'), "%s lets an escape sequence through:\n%s", what, text);
    cr_assert_null(strchr(text, '\r'), "%s lets a carriage return through:\n%s", what, text);
    cr_assert_null(strstr(text, "\xe2\x80\xa8"), "%s lets U+2028 through:\n%s", what, text);
    cr_assert_null(strstr(text, "\xe2\x80\xae"), "%s lets U+202E through:\n%s", what, text);
    cr_assert_null(strstr(text, "\nrun r-x succeeded"), "%s prints a forged line:\n%s", what, text);
    cr_assert_neq(strncmp(text, "run r-x succeeded", 17), 0, "%s prints a forged line", what);
}

Test(output, a_servers_text_cannot_move_the_cursor_or_forge_lines)
{
    struct harness_result r;
    char *workflow = harness_source_path("tests/workflows/hostile-text.yaml");

    env = harness_env_new();
    const char *argv[] = {env.troupe, "--db", env.db, "run", workflow, NULL};
    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "unexpected argument '\\x1b[2J"), "%s", r.out);
    expect_inert("run's progress", r.out);
    expect_inert("run's log lines", r.err);
    harness_result_release(&r);
    run = harness_db_text(env.db, "SELECT id FROM runs");

    const char *readers[][2] = {{"show", run}, {"runs", NULL}, {"log", run}, {"context", run}};
    for (size_t i = 0; i < sizeof(readers) / sizeof(readers[0]); i++) {
        troupe_on(env.db, &r, readers[i][0], readers[i][1], NULL);
        cr_assert_eq(r.exit_code, 0, "%s: %s%s", readers[i][0], r.out, r.err);
        expect_inert(readers[i][0], r.out);
        expect_inert(readers[i][0], r.err);
        harness_result_release(&r);
    }
    free(workflow);
    free(run);
    harness_env_release(&env);
}

/* ---- what show says of an approval --------------------------------------------------------- */

Test(show, an_approval_step_shows_how_long_it_waited)
{
    struct harness_result r;
    struct harness_proc proc;

    env = harness_env_new();
    char *path = harness_write_file(env.dir, "gate.yaml",
                                    "name: gate\n"
                                    "mcp_servers:\n"
                                    "  demo: {command: troupe-demo-tools, args: []}\n"
                                    "personas:\n"
                                    "  clerk: {role: Clerk, goal: Do it., servers: [demo],"
                                    " tools: [demo.greet]}\n"
                                    "steps:\n"
                                    "  - id: gate\n"
                                    "    approval: {who: carol, why: sign it}\n"
                                    "  - id: after\n"
                                    "    eval: '.steps.gate.output.by'\n"
                                    "    needs: gate\n");
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_spawn(argv, env.dir, &proc);
    harness_wait_for_approval(env.db, "gate");
    usleep(1500 * 1000);
    harness_approve(&env, "gate", "carol", "ok", false);
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);

    cr_assert_geq(harness_db_int(env.db, "SELECT json_extract(payload_json, '$.duration_ms')"
                                         " FROM audit WHERE type = 'step.finished' AND"
                                         " step_id = 'gate'"),
                  1400);
    run = harness_db_text(env.db, "SELECT id FROM runs");
    troupe_on(env.db, &r, "show", run, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    const char *line = strstr(r.out, "\ngate ");
    cr_assert_not_null(line, "%s", r.out);
    double seconds = 0;
    cr_assert_eq(sscanf(strstr(line, " 1 ") + 3, " %lf s", &seconds), 1, "%s", r.out);
    cr_assert_geq(seconds, 1.4, "the wait is not shown: %s", r.out);
    harness_result_release(&r);
    free(path);
    free(run);
    harness_env_release(&env);
}

/*
 * What a signature vouches for is what troupe shows: a signed run whose rows were changed
 * fails verify --signature too, and is refused a signature; a run whose runs row was deleted
 * is still found by verify (its events remain); a forged run id is printed escaped.
 */
Test(ledger, signatures_deleted_runs_and_forged_ids_are_not_let_through, .timeout = 300)
{
    struct harness_result r;
    char *base = NULL, *key = NULL, *pub = NULL, *sig = NULL;

    env = harness_env_new();
    run_ledger_workflow();
    cr_assert_geq(asprintf(&base, "%s/signer", env.dir), 0);
    cr_assert_geq(asprintf(&key, "%s.key", base), 0);
    cr_assert_geq(asprintf(&pub, "%s.pub", base), 0);
    cr_assert_geq(asprintf(&sig, "%s/run.sig", env.dir), 0);
    const char *keygen[] = {env.troupe, "keygen", "--signing", base, NULL};
    harness_run(keygen, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    harness_result_release(&r);
    const char *sign[] = {env.troupe, "--db", env.db, "audit", "sign", run,
                          "--key",    key,    "-o",   sig,     NULL};
    harness_run(sign, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    harness_result_release(&r);

    char *rows = tampered_copy("signed-rows", "UPDATE context SET value_json = '\"forged\"'", true);
    cr_assert_not_null(rows);
    const char *verify_sig[] = {env.troupe,    "--db", rows,           "audit", "verify", run,
                                "--signature", sig,    "--public-key", pub,     NULL};
    harness_run(verify_sig, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "signature valid") && strstr(r.out, "RECORDS DISAGREE"), "%s", r.out);
    harness_result_release(&r);
    sign[2] = rows;
    sign[9] = "-";
    sign[8] = NULL;
    harness_run(sign, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "refusing to sign run"), "%s", r.err);
    harness_result_release(&r);

    char *gone = tampered_copy("no-run-row", "DELETE FROM runs", true);
    cr_assert_not_null(gone);
    troupe_on(gone, &r, "audit", "verify", NULL);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "NO RUN RECORD"), "%s", r.out);
    harness_result_release(&r);

    char *forged = tampered_copy("forged-id",
                                 "UPDATE audit SET run_id = 'r-x' || char(27) || "
                                 "'[8m' WHERE seq = 1",
                                 true);
    cr_assert_not_null(forged);
    troupe_on(forged, &r, "audit", "verify", NULL);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert_null(strchr(r.out, 27), "a raw escape reached the terminal: %s", r.out);
    harness_result_release(&r);
    free(forged);
    free(gone);
    free(rows);
    free(sig);
    free(pub);
    free(key);
    free(base);
    free(run);
    harness_env_release(&env);
}
