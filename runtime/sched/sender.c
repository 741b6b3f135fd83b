/*
 * sched/sender.c: who sent the signal that cancels a run, for the run's record ("cancelled by
 * troupe cancel (process 4242, user ana)" rather than "cancelled by Terminated"). What is
 * noted in the handler uses only async-signal-safe calls; it decides nothing.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SENDER_CMDLINE 256

static volatile sig_atomic_t noted;
static pid_t sender_pid;
static uid_t sender_uid;
static char sender_cmdline[SENDER_CMDLINE]; /* NUL-separated arguments */
static ssize_t sender_cmdline_len;

void sched__sender_forget(void)
{
    noted = 0;
    sender_pid = 0;
    sender_cmdline_len = 0;
}

void sched__sender_note(const siginfo_t *info)
{
    char path[32] = "/proc/";
    char digits[16];
    size_t n = 0, len = 6;

    if (noted || !info || (info->si_code != SI_USER && info->si_code != SI_QUEUE) ||
        info->si_pid <= 0)
        return;
    noted = 1;
    sender_pid = info->si_pid;
    sender_uid = info->si_uid;
    /* Its command line now: a `kill` is gone by the time the run records why it ended. */
    for (pid_t pid = info->si_pid; pid > 0 && n < sizeof(digits); pid /= 10)
        digits[n++] = (char)('0' + pid % 10);
    while (n > 0)
        path[len++] = digits[--n];
    memcpy(path + len, "/cmdline", sizeof("/cmdline"));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        sender_cmdline_len = read(fd, sender_cmdline, sizeof(sender_cmdline) - 1);
        close(fd);
    }
}

static const char *signal_name(int sig)
{
    return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal";
}

char *sched__sender_describe(int sig)
{
    if (!noted)
        /* From the terminal (Ctrl-C) or the kernel: no process to name. */
        return xasprintf("cancelled by %s", sig == SIGINT ? "Ctrl-C (SIGINT)" : signal_name(sig));

    struct passwd pw, *found = NULL;
    char buf[1024], user[64];
    if (getpwuid_r(sender_uid, &pw, buf, sizeof(buf), &found) == 0 && found)
        snprintf(user, sizeof(user), "%s", found->pw_name);
    else
        snprintf(user, sizeof(user), "uid %u", (unsigned)sender_uid);

    char cmdline[SENDER_CMDLINE] = "";
    ssize_t len = sender_cmdline_len > 0 ? sender_cmdline_len : 0;
    memcpy(cmdline, sender_cmdline, (size_t)len);
    cmdline[len] = '\0';
    for (ssize_t i = 0; i < len; i++)
        if (cmdline[i] && (unsigned char)cmdline[i] < 0x20)
            cmdline[i] = '?'; /* another process's text, never a control character */
    const char *program = strrchr(cmdline, '/') ? strrchr(cmdline, '/') + 1 : cmdline;
    bool troupe_cancel = false;
    if (strcmp(program, "troupe") == 0)
        for (const char *arg = cmdline + strlen(cmdline) + 1; arg < cmdline + len;
             arg += strlen(arg) + 1)
            troupe_cancel = troupe_cancel || strcmp(arg, "cancel") == 0;
    if (troupe_cancel)
        return xasprintf("cancelled by troupe cancel (process %d, user %s)", (int)sender_pid, user);
    return xasprintf("cancelled by %s from process %d (%s%suser %s)", signal_name(sig),
                     (int)sender_pid, program, *program ? ", " : "", user);
}
