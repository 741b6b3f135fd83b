/*
 * mcp/stdio.c: the stdio server's child process: fork/exec with pipes, its own process group
 * and a parent-death signal; signalling, stopping and reaping it; reading and writing its
 * pipes for the session. It does not interpret messages: client.c does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mcp-internal.h"

/* What the child reports through the close-on-exec pipe when it cannot exec. */
enum spawn_stage { STAGE_SETUP, STAGE_CHDIR, STAGE_EXEC };
struct spawn_report {
    int stage;
    int errnum;
};

/* ---- the child, between fork and exec: async-signal-safe calls only ---------------------- */

static _Noreturn void child_fail(int report_fd, int stage)
{
    struct spawn_report report = {.stage = stage, .errnum = errno};
    ssize_t n = write(report_fd, &report, sizeof(report));
    (void)n; /* nothing more to do if even this fails: the parent sees exit status 127 */
    _exit(127);
}

/* Moves fd onto target without close-on-exec. */
static int install_fd(int fd, int target)
{
    return dup2(fd, target) < 0 ? -1 : 0;
}

static _Noreturn void child_run(const struct mcp_stdio_params *params, char **env, pid_t parent,
                                const int fds[3], int report_fd)
{
    /* Die with the agent; the parent may already be gone by the time this is set. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0)
        child_fail(report_fd, STAGE_SETUP);
    if (getppid() != parent)
        _exit(127);
    if (setpgid(0, 0) < 0)
        child_fail(report_fd, STAGE_SETUP);

    /* Ignored signals and the signal mask survive exec: give the server a clean slate. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* fails harmlessly for SIGKILL, SIGSTOP, RT internals */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* Lift the pipe ends above 2 first so that installing one cannot clobber another. */
    int high[3];
    for (int i = 0; i < 3; i++) {
        high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (high[i] < 0)
            child_fail(report_fd, STAGE_SETUP);
    }
    for (int i = 0; i < 3; i++)
        if (install_fd(high[i], i) < 0)
            child_fail(report_fd, STAGE_SETUP);

    if (params->cwd && chdir(params->cwd) < 0)
        child_fail(report_fd, STAGE_CHDIR);
    execvpe(params->argv[0], (char *const *)params->argv, env);
    child_fail(report_fd, STAGE_EXEC);
}

/* ---- the parent -------------------------------------------------------------------------- */

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static int set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int mcp__process_spawn(struct mcp__process *proc, const char *name,
                       const struct mcp_stdio_params *params, struct tr_error *err)
{
    int rc = 0;
    char **env = NULL;
    /* [0] is the read end, [1] the write end of each pipe. */
    int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
    int report_pipe[2] = {-1, -1};

    proc->pid = -1;
    proc->in_fd = proc->out_fd = proc->err_fd = -1;
    proc->reaped = false;
    proc->status = -1;

    if (!params->argv || !params->argv[0] || !params->argv[0][0])
        return tr_error_set(err, TR_EINVAL, "MCP server '%s' has no command", name);
    /* Built before fork: the child may only call async-signal-safe functions. */
    rc = tr_env_for_child(params->inherit_env, params->env, &env, err);
    if (rc < 0)
        return rc;

    if (pipe2(in_pipe, O_CLOEXEC) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0 ||
        pipe2(err_pipe, O_CLOEXEC) < 0 || pipe2(report_pipe, O_CLOEXEC) < 0) {
        rc = tr_error_set(err, TR_EPEER, "could not start MCP server '%s': pipe: %s", name,
                          strerror(errno));
        goto out_pipes;
    }

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = tr_error_set(err, TR_EPEER, "could not start MCP server '%s': fork: %s", name,
                          strerror(errno));
        goto out_pipes;
    }
    if (pid == 0) {
        const int child_fds[3] = {in_pipe[0], out_pipe[1], err_pipe[1]};
        child_run(params, env, parent, child_fds, report_pipe[1]);
    }

    /*
     * Also from this side, so that the group exists before we might signal it. Failure is
     * fine: EACCES means it already exec'd, having set its group itself.
     */
    (void)setpgid(pid, pid);
    proc->pid = pid;
    close_fd(&in_pipe[0]);
    close_fd(&out_pipe[1]);
    close_fd(&err_pipe[1]);
    close_fd(&report_pipe[1]);

    /* The report pipe closes on a successful exec, or carries why it failed. */
    struct spawn_report report;
    ssize_t n;
    do
        n = read(report_pipe[0], &report, sizeof(report));
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(report)) {
        mcp__process_reap(proc);
        const char *what = report.stage == STAGE_EXEC    ? "cannot run"
                           : report.stage == STAGE_CHDIR ? "cannot enter the directory of"
                                                         : "cannot set up";
        const char *subject =
            report.stage == STAGE_CHDIR && params->cwd ? params->cwd : params->argv[0];
        rc = tr_error_set(err, TR_EPEER, "could not start MCP server '%s': %s '%s': %s", name, what,
                          subject, strerror(report.errnum));
        goto out_pipes;
    }

    proc->in_fd = in_pipe[1];
    proc->out_fd = out_pipe[0];
    proc->err_fd = err_pipe[0];
    in_pipe[1] = out_pipe[0] = err_pipe[0] = -1;
    if (set_nonblocking(proc->in_fd) < 0 || set_nonblocking(proc->out_fd) < 0 ||
        set_nonblocking(proc->err_fd) < 0) {
        rc = tr_error_set(err, TR_EPEER, "could not start MCP server '%s': fcntl: %s", name,
                          strerror(errno));
        mcp__process_close_fds(proc);
        mcp__process_signal(proc, SIGKILL);
        mcp__process_reap(proc);
    }

out_pipes:
    close_fd(&in_pipe[0]);
    close_fd(&in_pipe[1]);
    close_fd(&out_pipe[0]);
    close_fd(&out_pipe[1]);
    close_fd(&err_pipe[0]);
    close_fd(&err_pipe[1]);
    close_fd(&report_pipe[0]);
    close_fd(&report_pipe[1]);
    free(env);
    return rc;
}

bool mcp__process_exited(struct mcp__process *proc)
{
    if (proc->reaped)
        return true;
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    /* WNOWAIT keeps the zombie, so the pid (and group id) cannot be reused under us. */
    if (waitid(P_PID, (id_t)proc->pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0) {
        if (errno == ECHILD) { /* someone else reaped it (SIGCHLD ignored?) */
            proc->reaped = true;
            proc->status = -1;
            return true;
        }
        return false;
    }
    return info.si_pid == proc->pid;
}

void mcp__process_signal(struct mcp__process *proc, int sig)
{
    if (!proc->reaped && proc->pid > 0)
        kill(-proc->pid, sig);
}

void mcp__process_reap(struct mcp__process *proc)
{
    if (proc->reaped || proc->pid <= 0)
        return;
    int status;
    pid_t r;
    do
        r = waitpid(proc->pid, &status, 0);
    while (r < 0 && errno == EINTR);
    proc->reaped = true;
    proc->status = r == proc->pid ? status : -1;
}

void mcp__process_describe(const struct mcp__process *proc, char *buf, size_t size)
{
    if (!proc->reaped || proc->status < 0)
        snprintf(buf, size, "exit status unknown");
    else if (WIFEXITED(proc->status))
        snprintf(buf, size, "exit status %d", WEXITSTATUS(proc->status));
    else if (WIFSIGNALED(proc->status))
        snprintf(buf, size, "killed by signal %d", WTERMSIG(proc->status));
    else
        snprintf(buf, size, "wait status %d", proc->status);
}

void mcp__process_close_fds(struct mcp__process *proc)
{
    close_fd(&proc->in_fd);
    close_fd(&proc->out_fd);
    close_fd(&proc->err_fd);
}

/* ---- the pipes, seen from a session ------------------------------------------------------ */

#define READ_CHUNK 65536

static void emit_stderr_line(struct mcp_session *s)
{
    if (s->err_len > 0 && s->err_line[s->err_len - 1] == '\r')
        s->err_len--;
    s->err_line[s->err_len] = '\0';
    if (s->observer.on_stderr)
        s->observer.on_stderr(s->observer.userdata, s->name, s->err_line, mcp__only_ticket(s));
    s->err_len = 0;
}

static void feed_stderr(struct mcp_session *s, const char *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (data[i] == '\n') {
            emit_stderr_line(s);
            continue;
        }
        s->err_line[s->err_len++] = data[i];
        if (s->err_len == MCP__STDERR_LINE_MAX)
            emit_stderr_line(s);
    }
}

void mcp__stdio_read_stderr(struct mcp_session *s)
{
    char chunk[4096];
    for (int rounds = 0; s->proc.err_fd >= 0 && rounds < 16; rounds++) {
        ssize_t n = read(s->proc.err_fd, chunk, sizeof(chunk));
        if (n > 0) {
            feed_stderr(s, chunk, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (s->err_len > 0)
            emit_stderr_line(s); /* a last line without a newline */
        close(s->proc.err_fd);
        s->proc.err_fd = -1;
    }
}

bool mcp__stdio_read_stdout(struct mcp_session *s, bool discard)
{
    if (s->proc.out_fd < 0)
        return false;
    if (!s->chunk)
        s->chunk = xmalloc(READ_CHUNK);
    ssize_t n = read(s->proc.out_fd, s->chunk, READ_CHUNK);
    if (n > 0) {
        if (!discard)
            mcp__lines_feed(&s->lines, s->chunk, (size_t)n);
        return true;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return false;
    s->stdout_eof = true;
    close(s->proc.out_fd);
    s->proc.out_fd = -1;
    return false;
}

static void close_stdin(struct mcp_session *s)
{
    if (s->proc.in_fd >= 0) {
        close(s->proc.in_fd);
        s->proc.in_fd = -1;
    }
    tr_buf_release(&s->outq);
}

void mcp__stdio_flush(struct mcp_session *s)
{
    while (s->outq.len > 0 && s->proc.in_fd >= 0) {
        ssize_t n = mcp__write_some(s->proc.in_fd, s->outq.data, s->outq.len);
        if (n == -EAGAIN)
            return;
        if (n < 0) { /* EPIPE: it closed its stdin or exited; the read side will tell */
            s->stdin_broken = true;
            close_stdin(s);
            return;
        }
        tr_buf_consume(&s->outq, (size_t)n);
    }
}

void mcp__stdio_send(struct mcp_session *s, const char *text)
{
    if (s->proc.in_fd < 0)
        return;
    int rc = tr_buf_append(&s->outq, text, strlen(text));
    rc |= tr_buf_append(&s->outq, "\n", 1);
    (void)rc; /* unlimited buffer: our own messages */
    mcp__stdio_flush(s);
}

/* Waits up to timeout_ms for the child to exit, draining its output meanwhile. */
static bool wait_exit(struct mcp_session *s, int timeout_ms)
{
    int64_t deadline = tr_now_ms() + timeout_ms;
    for (;;) {
        if (mcp__process_exited(&s->proc))
            return true;
        int64_t left = deadline - tr_now_ms();
        if (left <= 0)
            return false;
        /* No pidfd here: poll the pipes (a server may be blocked writing to them). */
        struct pollfd fds[2];
        nfds_t nfds = 0;
        if (s->proc.out_fd >= 0)
            fds[nfds++] = (struct pollfd){.fd = s->proc.out_fd, .events = POLLIN};
        if (s->proc.err_fd >= 0)
            fds[nfds++] = (struct pollfd){.fd = s->proc.err_fd, .events = POLLIN};
        if (poll(fds, nfds, left < 10 ? (int)left : 10) > 0) {
            mcp__stdio_read_stdout(s, true);
            mcp__stdio_read_stderr(s);
        }
    }
}

bool mcp__stdio_stop(struct mcp_session *s, int grace_ms)
{
    bool on_its_own = true;
    close_stdin(s);
    if (!wait_exit(s, grace_ms)) {
        on_its_own = false;
        mcp__process_signal(&s->proc, SIGTERM);
        if (!wait_exit(s, grace_ms))
            mcp__process_signal(&s->proc, SIGKILL);
    }
    /* The leader is a zombie now (or about to be): stragglers in its group go too. */
    mcp__process_signal(&s->proc, on_its_own ? SIGTERM : SIGKILL);
    mcp__process_reap(&s->proc);
    mcp__stdio_read_stderr(s);
    mcp__process_close_fds(&s->proc);
    s->dead = true;
    mcp__process_describe(&s->proc, s->exit_desc, sizeof(s->exit_desc));
    return on_its_own;
}
