/*
 * cli/worker.c: `troupe worker`: an agent for one persona on another machine, connected to a
 * scheduler's tcp endpoint over CURVE. It becomes troupe-agent (exec), which does the work.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe worker --connect tcp://HOST:PORT --persona NAME --server-key FILE\n"
            "                     --key FILE [--identity ID]\n"
            "\n"
            "Runs an agent for persona NAME of a scheduler on another machine (troupe run\n"
            "--listen ... --remote NAME). The bus is encrypted and authenticated with CURVE:\n"
            "FILE of --server-key is the scheduler's public key (its NAME.pub), FILE of --key\n"
            "this worker's key pair (troupe keygen), whose public key the scheduler must allow.\n"
            "The worker starts the persona's MCP servers here, as the scheduler configures\n"
            "them, and exits when the scheduler tells it to.\n"
            "\n"
            "options:\n"
            "  --connect ENDPOINT  the scheduler's tcp endpoint\n"
            "  --persona NAME      the persona to play\n"
            "  --server-key FILE   the scheduler's public key\n"
            "  --key FILE          this worker's key pair\n"
            "  --identity ID       bus identity (default: PERSONA@HOSTNAME.PID)\n"
            "  -h, --help          show this help\n");
}

int cli_worker(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_CONNECT = 1300, OPT_PERSONA, OPT_SERVER_KEY, OPT_KEY, OPT_IDENTITY };
    static const struct option options[] = {
        {"connect", required_argument, NULL, OPT_CONNECT},
        {"persona", required_argument, NULL, OPT_PERSONA},
        {"server-key", required_argument, NULL, OPT_SERVER_KEY},
        {"key", required_argument, NULL, OPT_KEY},
        {"identity", required_argument, NULL, OPT_IDENTITY},
        {"log-format", required_argument, NULL, CLI_OPT_LOG_FORMAT},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *connect = NULL, *persona = NULL, *server_key = NULL, *key = NULL;
    const char *identity = NULL;
    int opt;

    while ((opt = getopt_long(argc, argv, "vh", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        switch (opt) {
        case OPT_CONNECT:
            connect = optarg;
            break;
        case OPT_PERSONA:
            persona = optarg;
            break;
        case OPT_SERVER_KEY:
            server_key = optarg;
            break;
        case OPT_KEY:
            key = optarg;
            break;
        case OPT_IDENTITY:
            identity = optarg;
            break;
        default:
            return cli_usage(opt, usage);
        }
    }
    if (!connect || !persona || !server_key || !key || optind != argc) {
        cli_error("worker: --connect, --persona, --server-key and --key are required");
        return CLI_USAGE;
    }
    if (strncmp(connect, "tcp://", 6) != 0) {
        cli_error("worker: --connect wants a tcp:// endpoint, not '%s'", connect);
        return CLI_USAGE;
    }
    char host[128] = "host";
    gethostname(host, sizeof(host) - 1);
    char *default_identity = xasprintf("%s@%s.%d", persona, host, (int)getpid());
    char *agent = cli_agent_program(); /* the persona's servers may be next to troupe too */
    const char *agent_argv[] = {agent,
                                "--connect",
                                connect,
                                "--persona",
                                persona,
                                "--identity",
                                identity ? identity : default_identity,
                                "--server-key",
                                server_key,
                                "--key",
                                key,
                                "--log-format",
                                common->log_format == TR_LOG_JSON ? "json" : "text",
                                common->verbose ? "--verbose" : NULL,
                                NULL};
    /* The agent keeps only the default environment: see tr_env_for_child. */
    char **env = NULL;
    if (tr_env_for_child(TR_ENV_AGENT_KEEP, NULL, &env, NULL) == 0)
        execve(agent, (char *const *)agent_argv, env);
    free(env);
    cli_error("could not run '%s': %s", agent, strerror(errno));
    free(agent);
    free(default_identity);
    return CLI_FAILED;
}
