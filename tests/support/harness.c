/*
 * Test harness implementation: fork/exec with captured output and a deadline, temp files,
 * read-only database queries, and a /proc scan for leftover processes.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *data = NULL;
    size_t len = 0;
    char chunk[4096];
    size_t n;

    data = strdup("");
    if (!f)
        return data;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        data = realloc(data, len + n + 1);
        cr_assert_not_null(data);
        memcpy(data + len, chunk, n);
        len += n;
        data[len] = '\0';
    }
    fclose(f);
    return data;
}

void harness_spawn(const char *const *argv, const char *cwd, struct harness_proc *ret)
{
    char template[] = "/tmp/troupe-out-XXXXXX";
    int out_fd = mkstemp(template);
    cr_assert_geq(out_fd, 0);
    ret->out_path = strdup(template);
    strcpy(template, "/tmp/troupe-err-XXXXXX");
    int err_fd = mkstemp(template);
    cr_assert_geq(err_fd, 0);
    ret->err_path = strdup(template);

    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        setpgid(0, 0);
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        if (cwd && chdir(cwd) < 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    close(out_fd);
    close(err_fd);
    ret->pid = pid;
}

void harness_finish(struct harness_proc *proc, int timeout_ms, struct harness_result *ret)
{
    long long deadline = now_ms() + timeout_ms;
    int status = 0;
    bool timed_out = false;

    while (waitpid(proc->pid, &status, WNOHANG) == 0) {
        if (now_ms() > deadline) {
            kill(-proc->pid, SIGKILL);
            waitpid(proc->pid, &status, 0);
            timed_out = true;
            break;
        }
        usleep(10 * 1000);
    }
    if (timed_out)
        ret->exit_code = -1;
    else if (WIFEXITED(status))
        ret->exit_code = WEXITSTATUS(status);
    else
        ret->exit_code = 128 + WTERMSIG(status);
    ret->out = slurp(proc->out_path);
    ret->err = slurp(proc->err_path);
    /* In the sanitizer build, a report from the program or its agents fails the test. */
    cr_assert_null(strstr(ret->err, "Sanitizer"), "sanitizer report:\n%s", ret->err);
    cr_assert_null(strstr(ret->err, "runtime error:"), "sanitizer report:\n%s", ret->err);
    unlink(proc->out_path);
    unlink(proc->err_path);
    free(proc->out_path);
    free(proc->err_path);
}

void harness_run(const char *const *argv, const char *cwd, int timeout_ms,
                 struct harness_result *ret)
{
    struct harness_proc proc;
    harness_spawn(argv, cwd, &proc);
    harness_finish(&proc, timeout_ms, ret);
}

long long harness_db_wait(const char *db_path, const char *sql, long long want, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    long long value = -1;

    while (now_ms() < deadline) {
        sqlite3 *db = NULL;
        sqlite3_stmt *stmt = NULL;
        if (access(db_path, F_OK) == 0 &&
            sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
            sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
            sqlite3_step(stmt) == SQLITE_ROW)
            value = sqlite3_column_int64(stmt, 0);
        sqlite3_finalize(stmt);
        sqlite3_close(db);
        if (value >= want)
            return value;
        usleep(50 * 1000);
    }
    return value;
}

void harness_result_release(struct harness_result *result)
{
    free(result->out);
    free(result->err);
    result->out = result->err = NULL;
}

static char *env_path(const char *var, const char *rel)
{
    const char *root = getenv(var);
    cr_assert_not_null(root, "%s is not set: run the tests through meson test", var);
    char *path;
    cr_assert_geq(asprintf(&path, "%s/%s", root, rel), 0);
    return path;
}

char *harness_build_path(const char *rel)
{
    return env_path("TROUPE_BUILD_DIR", rel);
}

char *harness_source_path(const char *rel)
{
    return env_path("TROUPE_SOURCE_DIR", rel);
}

char *harness_tempdir(void)
{
    char *dir = strdup("/tmp/troupe-test-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    return dir;
}

char *harness_write_file(const char *dir, const char *name, const char *text)
{
    char *path;
    cr_assert_geq(asprintf(&path, "%s/%s", dir, name), 0);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
    return path;
}

static sqlite3_stmt *query(sqlite3 **db, const char *db_path, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    cr_assert_eq(sqlite3_open_v2(db_path, db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK,
                 "cannot open %s", db_path);
    /* A database being created (its schema written) is locked for a moment: wait for it. */
    sqlite3_busy_timeout(*db, 10000);
    cr_assert_eq(sqlite3_prepare_v2(*db, sql, -1, &stmt, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(*db));
    return stmt;
}

long long harness_db_int(const char *db_path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *stmt = query(&db, db_path, sql);
    long long value = sqlite3_step(stmt) == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
}

char *harness_db_text(const char *db_path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *stmt = query(&db, db_path, sql);
    char *value = NULL;
    if (sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_type(stmt, 0) != SQLITE_NULL)
        value = strdup((const char *)sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
}

int harness_free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

int harness_count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Reads pid's command line into buf (size bytes), its NULs made spaces; false (and buf empty)
 * if it cannot be read. */
static bool read_cmdline(pid_t pid, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
    int fd = open(path, O_RDONLY);
    buf[0] = '\0';
    if (fd < 0)
        return false;
    ssize_t len = read(fd, buf, size - 1);
    close(fd);
    for (ssize_t i = 0; i < len - 1; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    buf[len > 0 ? len : 0] = '\0';
    return true;
}

static int scan_processes(const char *dir, const char *needle)
{
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    int count = 0;

    cr_assert_not_null(proc);
    while ((entry = readdir(proc))) {
        char path[300], target[PATH_MAX], cmdline[4096];
        pid_t pid = (pid_t)atoi(entry->d_name);
        if (pid <= 0 || pid == getpid())
            continue;
        snprintf(path, sizeof(path), "/proc/%d/cwd", pid);
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        bool match = false;
        if (n > 0) {
            target[n] = '\0';
            match = dir && strcmp(target, dir) == 0;
        }
        if (read_cmdline(pid, cmdline, sizeof(cmdline)) && needle && strstr(cmdline, needle) &&
            !strstr(cmdline, "test_"))
            match = true;
        if (match) {
            fprintf(stderr, "leftover process %d: %s\n", pid, cmdline);
            count++;
        }
    }
    closedir(proc);
    return count;
}

int harness_find_pids(const char *needle, int *pids, int max)
{
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    int count = 0;

    cr_assert_not_null(proc);
    while ((entry = readdir(proc)) && count < max) {
        char cmdline[4096];
        pid_t pid = (pid_t)atoi(entry->d_name);
        if (pid <= 0 || pid == getpid())
            continue;
        if (!read_cmdline(pid, cmdline, sizeof(cmdline)))
            continue;
        if (strstr(cmdline, needle) && !strstr(cmdline, "test_"))
            pids[count++] = pid;
    }
    closedir(proc);
    return count;
}

void harness_hash_field(crypto_hash_sha256_state *state, const char *field)
{
    uint64_t len = strlen(field);
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(len >> (56 - 8 * i));
    crypto_hash_sha256_update(state, prefix, sizeof(prefix));
    crypto_hash_sha256_update(state, (const unsigned char *)field, len);
}

static const char *text_or(sqlite3_stmt *stmt, int column, const char *fallback)
{
    const unsigned char *text = sqlite3_column_text(stmt, column);
    return text ? (const char *)text : fallback;
}

void harness_hash_field_v2(crypto_hash_sha256_state *state, const char *field)
{
    unsigned char tag = field ? 1 : 0;
    crypto_hash_sha256_update(state, &tag, 1);
    if (field)
        harness_hash_field(state, field);
}

/* A column as text, or NULL for SQL NULL. */
static const char *text_or_null(sqlite3_stmt *stmt, int column)
{
    return (const char *)sqlite3_column_text(stmt, column);
}

long long harness_audit_verify(const char *db_path, const char *run_id)
{
    sqlite3 *db;
    sqlite3_stmt *stmt;
    char prev[65] = "0000000000000000000000000000000000000000000000000000000000000000";
    long long expected = 1;

    cr_assert_eq(sodium_init() >= 0, 1);
    cr_assert_eq(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    /* The run's encoding: 2 for runs recorded since schema version 5, else 1. */
    int encoding = 1;
    cr_assert_eq(
        sqlite3_prepare_v2(db, "SELECT audit_encoding FROM runs WHERE id = ?1", -1, &stmt, NULL),
        SQLITE_OK);
    sqlite3_bind_text(stmt, 1, run_id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(stmt) == SQLITE_ROW)
        encoding = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT seq, time, step_id, actor, type, payload_json, "
                                    "prev_hash, hash FROM audit WHERE run_id = ?1 ORDER BY seq",
                                    -1, &stmt, NULL),
                 SQLITE_OK);
    sqlite3_bind_text(stmt, 1, run_id, -1, SQLITE_TRANSIENT);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        long long seq = sqlite3_column_int64(stmt, 0);
        char seq_text[32], hex[65];
        unsigned char digest[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_state state;

        if (seq != expected) {
            fprintf(stderr, "audit of %s: seq %lld where %lld was expected\n", run_id, seq,
                    expected);
            expected = -1;
            break;
        }
        if (strcmp(text_or(stmt, 6, ""), prev) != 0) {
            fprintf(stderr, "audit of %s: seq %lld does not link to the event before\n", run_id,
                    seq);
            expected = -1;
            break;
        }
        snprintf(seq_text, sizeof(seq_text), "%lld", seq);
        crypto_hash_sha256_init(&state);
        if (encoding == 2) {
            /* troupe-audit-v2: a tag byte (0 NULL, 1 text) before each length-prefixed field */
            const char *fields[] = {"troupe-audit-v2",
                                    prev,
                                    run_id,
                                    seq_text,
                                    text_or_null(stmt, 1),
                                    text_or_null(stmt, 2),
                                    text_or_null(stmt, 3),
                                    text_or_null(stmt, 4),
                                    text_or_null(stmt, 5)};
            for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
                harness_hash_field_v2(&state, fields[i]);
        } else {
            harness_hash_field(&state, "troupe-audit-v1");
            harness_hash_field(&state, prev);
            harness_hash_field(&state, run_id);
            harness_hash_field(&state, seq_text);
            harness_hash_field(&state, text_or(stmt, 1, ""));
            harness_hash_field(&state, text_or(stmt, 2, ""));
            harness_hash_field(&state, text_or(stmt, 3, ""));
            harness_hash_field(&state, text_or(stmt, 4, ""));
            harness_hash_field(&state, text_or(stmt, 5, ""));
        }
        crypto_hash_sha256_final(&state, digest);
        sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
        if (strcmp(hex, text_or(stmt, 7, "")) != 0) {
            fprintf(stderr, "audit of %s: seq %lld has a wrong hash\n", run_id, seq);
            expected = -1;
            break;
        }
        memcpy(prev, hex, sizeof(prev));
        expected++;
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return expected < 0 ? -1 : expected - 1;
}

int harness_leftover_processes(const char *dir, const char *needle)
{
    int count = 0;
    for (int i = 0; i < 30; i++) {
        count = scan_processes(dir, needle);
        if (count == 0)
            return 0;
        usleep(100 * 1000);
    }
    return count;
}

void harness_check_runs(const char *troupe, const char *db, const char *dir)
{
    struct harness_result r;

    if (access(db, F_OK) != 0)
        return;
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type = 'mcp.stderr' AND "
                                    "(payload_json LIKE '%Sanitizer%' OR payload_json LIKE "
                                    "'%runtime error:%')"),
                 0, "a sanitizer report in an MCP server's stderr");
    const char *verify[] = {troupe, "--db", db, "audit", "verify", NULL};
    harness_run(verify, dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "audit verify:\n%s%s", r.out, r.err);
    harness_result_release(&r);

    /* A child run (a workflow step's) is replayed with its parent, from its parent's plan. */
    const char *top = harness_db_int(db, "SELECT count(*) FROM sqlite_master WHERE name = "
                                         "'child_runs'") > 0
                          ? " AND id NOT IN (SELECT child_id FROM child_runs)"
                          : "";
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM runs WHERE status != 'running'%s", top);
    long long runs = harness_db_int(db, sql);
    for (long long i = 0; i < runs; i++) {
        snprintf(sql, sizeof(sql),
                 "SELECT id FROM runs WHERE status != 'running'%s ORDER BY id LIMIT 1 OFFSET %lld",
                 top, i);
        char *run = harness_db_text(db, sql);
        const char *replay[] = {troupe, "--db", db, "replay", run, NULL};
        harness_run(replay, dir, 120000, &r);
        /* A test that edited its workflow after the run meets replay's refusal to replay a
         * changed file: that is replay doing its job, not a divergence. */
        if (!strstr(r.err, "has changed since run")) {
            cr_assert_eq(r.exit_code, 0, "replay of %s:\n%s%s", run, r.out, r.err);
            cr_assert(strstr(r.out, "no divergence"), "%s", r.out);
        }
        harness_result_release(&r);
        free(run);
    }
}

struct harness_env harness_env_new(void)
{
    struct harness_env env;
    env.dir = harness_tempdir();
    cr_assert_geq(asprintf(&env.db, "%s/state/troupe.db", env.dir), 0);
    env.troupe = harness_build_path("troupe");
    /* The OAuth token store of every troupe the test starts (and of its agents): the test's
       own, never the user's ~/.config/troupe. */
    char *config = NULL;
    cr_assert_geq(asprintf(&config, "%s/config", env.dir), 0);
    setenv("XDG_CONFIG_HOME", config, 1);
    free(config);
    return env;
}

void harness_env_release(struct harness_env *env)
{
    harness_check_runs(env->troupe, env->db, env->dir);
    cr_assert_eq(harness_leftover_processes(env->dir, env->dir), 0,
                 "processes were left running in %s", env->dir);
    free(env->dir);
    free(env->db);
    free(env->troupe);
}

static char *format_sql(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static char *format_sql(const char *fmt, va_list ap)
{
    char *sql;
    cr_assert_geq(vasprintf(&sql, fmt, ap), 0);
    return sql;
}

long long harness_query_int(const char *db, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = format_sql(fmt, ap);
    va_end(ap);
    long long value = harness_db_int(db, sql);
    free(sql);
    return value;
}

char *harness_query_text(const char *db, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = format_sql(fmt, ap);
    va_end(ap);
    char *value = harness_db_text(db, sql);
    free(sql);
    return value;
}

void harness_approve(const struct harness_env *env, const char *step, const char *as,
                     const char *comment, bool reject)
{
    struct harness_result r;
    const char *argv[] = {env->troupe,
                          "--db",
                          env->db,
                          "approve",
                          "latest",
                          step,
                          "--as",
                          as,
                          "--comment",
                          comment,
                          reject ? "--reject" : NULL,
                          NULL};
    harness_run(argv, env->dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
}

void harness_wait_for_approval(const char *db, const char *step)
{
    char *sql;
    cr_assert_geq(asprintf(&sql,
                           "SELECT count(*) FROM steps WHERE step_id = '%s' AND state = "
                           "'waiting-approval'",
                           step),
                  0);
    cr_assert_eq(harness_db_wait(db, sql, 1, 30000), 1, "%s did not wait", step);
    free(sql);
}

char *harness_node_check(const char *script, const char *arg1, const char *arg2)
{
    char *modules = harness_source_path("tests/audit/node_modules/ajv");
    if (access(modules, R_OK) != 0) {
        free(modules);
        cr_assert_null(getenv("TROUPE_REQUIRE_INTEROP"), "tests/audit has no node_modules");
        cr_skip_test("the checkers' npm packages are not installed; run scripts/test");
    }
    char *path = harness_source_path(script);
    const char *argv[] = {"/usr/bin/env", "node", path, arg1, arg2, NULL};
    struct harness_result r;
    harness_run(argv, NULL, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s %s:\n%s%s", script, arg1, r.out, r.err);
    char *out = r.out;
    r.out = NULL;
    harness_result_release(&r);
    free(path);
    free(modules);
    return out;
}

/* Collects "DROP TRIGGER name;" statements. */
static int collect_trigger(void *userdata, int columns, char **values, char **names)
{
    char **sql = userdata, *more;
    (void)columns;
    (void)names;
    cr_assert_geq(asprintf(&more, "%sDROP TRIGGER \"%s\";", *sql, values[0]), 0);
    free(*sql);
    *sql = more;
    return 0;
}

int harness_db_tamper(const char *db_path, bool drop_triggers, const char *sql)
{
    sqlite3 *db;
    char *error = NULL, *drops = strdup("");

    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    /* A live scheduler holds the write lock between its commits: wait for a gap. */
    sqlite3_busy_timeout(db, 10000);
    if (drop_triggers) {
        cr_assert_eq(sqlite3_exec(db, "SELECT name FROM sqlite_schema WHERE type = 'trigger'",
                                  collect_trigger, &drops, &error),
                     SQLITE_OK, "%s", error);
        cr_assert_eq(sqlite3_exec(db, drops, NULL, NULL, &error), SQLITE_OK, "%s", error);
    }
    int rc = sqlite3_exec(db, sql, NULL, NULL, &error);
    if (drop_triggers)
        cr_assert_eq(rc, SQLITE_OK, "%s: %s", sql, error);
    if (rc == SQLITE_OK)
        cr_assert_gt(sqlite3_changes(db), 0, "%s changed nothing", sql);
    sqlite3_free(error);
    sqlite3_close(db);
    free(drops);
    return rc;
}

/* The chain hash of one event in troupe-audit-v2 or v1, computed here from the documented
 * encoding (docs/audit.md), independently of runtime/store. */
void harness_audit_event_hash(int encoding, const char *prev, const char *run, long long seq,
                              const char *time, const char *step, const char *actor,
                              const char *type, const char *payload, char hash[65])
{
    crypto_hash_sha256_state state;
    unsigned char digest[32];
    char seq_text[32];
    snprintf(seq_text, sizeof(seq_text), "%lld", seq);
    const char *fields[] = {encoding == 2 ? "troupe-audit-v2" : "troupe-audit-v1",
                            prev,
                            run,
                            seq_text,
                            time,
                            step,
                            actor,
                            type,
                            payload};
    crypto_hash_sha256_init(&state);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (encoding == 2)
            harness_hash_field_v2(&state, fields[i]);
        else
            harness_hash_field(&state, fields[i] ? fields[i] : "");
    }
    crypto_hash_sha256_final(&state, digest);
    sodium_bin2hex(hash, 65, digest, sizeof(digest));
}

/* Recomputes the whole chain of run in encoding (1 or 2). */
void harness_audit_rechain(const char *db_path, const char *run, int encoding)
{
    sqlite3 *db;
    sqlite3_stmt *select, *update;
    char prev[65];

    memset(prev, '0', 64);
    prev[64] = '\0';
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT seq, time, step_id, actor, type, payload_json FROM "
                                    "audit WHERE run_id = ?1 ORDER BY seq",
                                    -1, &select, NULL),
                 SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE run_id = "
                                    "?3 AND seq = ?4",
                                    -1, &update, NULL),
                 SQLITE_OK);
    sqlite3_bind_text(select, 1, run, -1, SQLITE_STATIC);
    while (sqlite3_step(select) == SQLITE_ROW) {
        char hash[65];
        harness_audit_event_hash(encoding, prev, run, sqlite3_column_int64(select, 0),
                                 (const char *)sqlite3_column_text(select, 1),
                                 (const char *)sqlite3_column_text(select, 2),
                                 (const char *)sqlite3_column_text(select, 3),
                                 (const char *)sqlite3_column_text(select, 4),
                                 (const char *)sqlite3_column_text(select, 5), hash);
        sqlite3_bind_text(update, 1, prev, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(update, 2, hash, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(update, 3, run, -1, SQLITE_STATIC);
        sqlite3_bind_int64(update, 4, sqlite3_column_int64(select, 0));
        cr_assert_eq(sqlite3_step(update), SQLITE_DONE);
        sqlite3_reset(update);
        memcpy(prev, hash, sizeof(prev));
    }
    sqlite3_finalize(select);
    sqlite3_finalize(update);
    sqlite3_close(db);
}
