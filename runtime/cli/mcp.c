/*
 * cli/mcp.c: `troupe mcp`: talk to one MCP server by hand: what it is (version, era,
 * capabilities), its tools, resources and prompts, and calling a tool. The server is a URL, a
 * command, or a name in a {"mcpServers": {...}} file. It neither runs nor records workflows.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "mcp.h"
#include "workflow.h"

#define MAX_ITEMS 64 /* argv entries after --, and headers taken from a config entry */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe mcp ACTION [options] (--url URL | --server NAME | -- COMMAND [ARG...])\n"
            "\n"
            "actions:\n"
            "  info                 negotiated protocol version, era, server and capabilities\n"
            "  tools                the server's tools (every page)\n"
            "  resources            the server's resources and resource templates\n"
            "  prompts              the server's prompts\n"
            "  call TOOL [JSON]     call a tool with JSON arguments (an object)\n"
            "  login SERVER         authorize troupe for an OAuth-protected server (a person,\n"
            "                       once); logout SERVER, auth status: see each one's --help\n"
            "\n"
            "options:\n"
            "  --url URL            a Streamable HTTP server\n"
            "  --server NAME        a server named in the config file\n"
            "  --config FILE        {\"mcpServers\": {...}} (default: $TROUPE_MCP_CONFIG, else\n"
            "                       .mcp.json); ${VAR} in env and headers comes from the\n"
            "                       environment\n"
            "  --header 'N: V'      an extra HTTP header (repeatable)\n"
            "  --protocol VERSION   auto (prefer 2026-07-28, fall back), or a revision\n"
            "  --timeout MS         per request (default %d)\n"
            "  --json               print JSON as received\n"
            "  -h, --help           show this help\n",
            MCP_DEFAULT_TIMEOUT_MS);
}

/* ---- the server ---------------------------------------------------------------------------- */

struct target {
    const char *url;
    const char *server;
    const char *config;
    const char *protocol;
    const char *argv[MAX_ITEMS + 1];
    const char *headers[MAX_ITEMS + 1]; /* --header lines, ${NAME} expanded (owned) */
    size_t n_headers;
    const cJSON *entry; /* the server entry: from the config, or built from the options */
    cJSON *config_json;
    cJSON *built; /* the entry built from --url or -- COMMAND */
};

/* The variable a ${NAME} (or ${env:NAME}, as workflows write it) at p names; caller frees. */
static char *reference_name(const char *p, const char *end)
{
    const char *name = p + 2;
    if (strncmp(name, "env:", 4) == 0 && name + 4 <= end)
        name += 4;
    return xstrndup(name, (size_t)(end - name));
}

/* Copies text with each ${NAME} replaced by the environment variable (checked to be set
 * first: unset_references). */
static char *expand(const char *text)
{
    struct tr_buf out;
    tr_buf_init(&out, 0);
    int rc = 0;
    for (const char *p = text; *p;) {
        const char *end = p[0] == '$' && p[1] == '{' ? strchr(p, '}') : NULL;
        if (end) {
            char *name = reference_name(p, end);
            const char *value = getenv(name);
            rc |= tr_buf_append(&out, value ? value : "", value ? strlen(value) : 0);
            free(name);
            p = end + 1;
        } else {
            rc |= tr_buf_append(&out, p, 1);
            p++;
        }
    }
    (void)rc; /* unlimited buffer */
    return tr_buf_take(&out);
}

/* Appends to missing each variable that a ${NAME} in the strings under node names and the
 * environment does not set. */
static void unset_references(const cJSON *node, struct tr_buf *missing)
{
    const cJSON *child;
    if (cJSON_IsString(node)) {
        for (const char *p = strstr(node->valuestring, "${"); p; p = strstr(p + 1, "${")) {
            const char *end = strchr(p, '}');
            if (!end)
                break;
            char *name = reference_name(p, end);
            if (!getenv(name) && (!missing->data || !strstr(missing->data, name)) &&
                ((missing->len && tr_buf_append(missing, ", ", 2) < 0) ||
                 tr_buf_append(missing, name, strlen(name)) < 0))
                abort();
            free(name);
        }
        return;
    }
    cJSON_ArrayForEach(child, node)
    {
        unset_references(child, missing);
    }
}

static int load_config(struct target *t)
{
    const char *path = t->config ? t->config : getenv("TROUPE_MCP_CONFIG");
    if (!path)
        path = ".mcp.json";
    char *text = NULL;
    size_t len = 0;
    struct tr_error err = {0};
    if (tr_file_read(path, 4u << 20, &text, &len, &err) < 0) {
        cli_error("%s", err.message);
        return CLI_USAGE;
    }
    t->config_json = cJSON_ParseWithLength(text, len);
    free(text);
    cJSON *servers = cJSON_GetObjectItemCaseSensitive(t->config_json, "mcpServers");
    cJSON *entry = cJSON_GetObjectItemCaseSensitive(servers, t->server);
    if (!cJSON_IsObject(entry)) {
        cli_error("%s: no server named '%s' under \"mcpServers\"", path, t->server);
        return CLI_USAGE;
    }
    /* An unset variable would send an empty token or an empty setting: refused, all named. */
    struct tr_buf missing;
    tr_buf_init(&missing, 0);
    unset_references(cJSON_GetObjectItemCaseSensitive(entry, "env"), &missing);
    unset_references(cJSON_GetObjectItemCaseSensitive(entry, "headers"), &missing);
    unset_references(cJSON_GetObjectItemCaseSensitive(entry, "url"), &missing);
    if (missing.len) {
        cli_error("%s: server '%s': environment variables not set: %s", path, t->server,
                  missing.data);
        tr_buf_release(&missing);
        return CLI_USAGE;
    }
    tr_buf_release(&missing);
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(entry, "url")) &&
        !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(entry, "command"))) {
        cli_error("%s: server '%s' has neither \"url\" nor \"command\"", path, t->server);
        return CLI_USAGE;
    }
    t->entry = entry;
    return CLI_OK;
}

/* Each --header's ${NAME} (or ${env:NAME}) from the environment, as in a config's headers, so
   that a token need not be in argv; an unset one is refused, never sent empty. The lines
   become the target's own. */
static int expand_headers(struct target *t)
{
    struct tr_buf missing;
    tr_buf_init(&missing, 0);
    for (size_t i = 0; i < t->n_headers; i++) {
        cJSON *line = cJSON_CreateString(t->headers[i]);
        unset_references(line, &missing);
        cJSON_Delete(line);
    }
    for (size_t i = 0; i < t->n_headers; i++)
        t->headers[i] = missing.len ? xstrdup(t->headers[i]) : expand(t->headers[i]);
    if (missing.len) {
        cli_error("--header: environment variables not set: %s", missing.data);
        tr_buf_release(&missing);
        return CLI_USAGE;
    }
    tr_buf_release(&missing);
    return CLI_OK;
}

/* The server entry that --url or -- COMMAND [ARG...] stands for. */
static const cJSON *built_entry(struct target *t)
{
    cJSON *servers = cJSON_CreateObject();
    cJSON *entry = cJSON_AddObjectToObject(servers, t->url ? t->url : t->argv[0]);
    if (t->url) {
        cJSON_AddStringToObject(entry, "url", t->url);
    } else {
        cJSON_AddStringToObject(entry, "command", t->argv[0]);
        cJSON *args = cJSON_AddArrayToObject(entry, "args");
        for (size_t i = 1; t->argv[i]; i++)
            cJSON_AddItemToArray(args, cJSON_CreateString(t->argv[i]));
    }
    t->built = servers;
    return entry;
}

static int open_target(struct target *t, int timeout_ms, struct mcp_session **ret_session)
{
    struct tr_error err = {0};
    struct mcp_open_params params = {
        .name = t->url,
        .protocol_version = t->protocol,
        .headers = t->headers,
        .expand = t->server ? expand : NULL, /* ${NAME} comes from the environment */
        .timeout_ms = timeout_ms,
    };
    const cJSON *entry = t->entry ? t->entry : built_entry(t);
    if (mcp_session_open(entry, &params, NULL, ret_session, &err) < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    return CLI_OK;
}

/* ---- the actions --------------------------------------------------------------------------- */

static void print_json(const cJSON *json)
{
    char *text = tr_json_print_pretty(json);
    puts(text);
    free(text);
}

static const char *str(const cJSON *object, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static int do_info(struct mcp_session *session, bool json)
{
    const cJSON *info = mcp_session_server_info(session);
    const cJSON *caps = mcp_session_server_capabilities(session);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "protocolVersion", mcp_session_protocol_version(session));
        cJSON_AddStringToObject(o, "era", mcp_session_is_modern(session) ? "modern" : "legacy");
        cJSON_AddItemToObject(o, "serverInfo", cJSON_Duplicate(info, 1));
        cJSON_AddItemToObject(o, "capabilities", cJSON_Duplicate(caps, 1));
        print_json(o);
        cJSON_Delete(o);
        return CLI_OK;
    }
    printf("protocol:     %s (%s era)\n", mcp_session_protocol_version(session),
           mcp_session_is_modern(session) ? "modern, stateless" : "legacy, initialize handshake");
    printf("server:       %s %s\n", str(info, "name"), str(info, "version"));
    printf("capabilities: ");
    const cJSON *cap;
    cJSON_ArrayForEach(cap, caps) printf("%s%s", cap->string, cap->next ? ", " : "");
    printf("\n");
    return CLI_OK;
}

/* Lists method's items: "name  description" lines (or JSON). */
static int do_list(struct mcp_session *session, const char *method, const char *key,
                   const char *name_key, int timeout_ms, bool json)
{
    struct tr_error err = {0};
    cJSON *items = NULL;
    int rc = strcmp(method, "tools/list") == 0
                 ? mcp_session_list_tools(session, timeout_ms, &items, &err)
                 : mcp_session_list_all(session, method, key, timeout_ms, &items, &err);
    if (rc < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    if (json) {
        print_json(items);
    } else {
        const cJSON *item;
        cJSON_ArrayForEach(item, items)
        {
            const char *description = str(item, "description");
            const char *newline = strchr(description, '\n');
            int len = newline ? (int)(newline - description) : (int)strlen(description);
            printf("%-32s %.*s\n", str(item, name_key), len, description);
        }
    }
    cJSON_Delete(items);
    return CLI_OK;
}

static int do_call(struct mcp_session *session, const char *tool, const char *args_text,
                   int timeout_ms, bool json)
{
    cJSON *args = args_text ? cJSON_ParseWithOpts(args_text, NULL, true) : NULL;
    if (args_text && !cJSON_IsObject(args)) {
        cJSON_Delete(args);
        cli_error("the arguments must be a JSON object, e.g. '{\"message\": \"hi\"}'");
        return CLI_USAGE;
    }
    struct tr_error err = {0};
    cJSON *result = NULL;
    /* Lists first: in the modern era x-mcp-header parameters need the tool's schema. */
    cJSON *tools = NULL;
    if (mcp_session_list_tools(session, timeout_ms, &tools, &err) == 0)
        cJSON_Delete(tools);
    int rc = mcp_session_call_tool(session, tool, args, NULL, timeout_ms, &result, &err);
    cJSON_Delete(args);
    if (rc < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    bool is_error = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError"));
    if (json) {
        print_json(result);
    } else {
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(result, "content"))
        {
            const char *type = str(item, "type");
            if (strcmp(type, "text") == 0)
                printf("%s\n", str(item, "text"));
            else if (strcmp(type, "resource_link") == 0)
                printf("[resource link] %s %s\n", str(item, "uri"), str(item, "name"));
            else if (strcmp(type, "resource") == 0)
                printf("[resource] %s\n", str(cJSON_GetObjectItem(item, "resource"), "uri"));
            else
                printf("[%s] %s, %zu bytes base64\n", type, str(item, "mimeType"),
                       strlen(str(item, "data")));
        }
        const cJSON *structured = cJSON_GetObjectItemCaseSensitive(result, "structuredContent");
        if (structured) {
            printf("structured content:\n");
            print_json(structured);
        }
    }
    cJSON_Delete(result);
    return is_error ? CLI_FAILED : CLI_OK;
}

/* ---- credentials: login, logout, auth status ------------------------------------------------ */

#define LOGIN_DEFAULT_TIMEOUT_S 300

static void login_usage(FILE *out)
{
    fprintf(out,
            "usage: troupe mcp login SERVER [--workflow FILE | --config FILE] [--timeout S]\n"
            "\n"
            "Authorizes troupe for an MCP server behind OAuth: prints the authorization URL to\n"
            "open in a browser, receives the redirect on http://127.0.0.1:PORT/callback (a port\n"
            "the system picks) and stores the tokens in $XDG_CONFIG_HOME/troupe/tokens.json\n"
            "(else ~/.config/troupe/tokens.json), replacing any the server had. Runs then use\n"
            "them, refreshing them without a person.\n"
            "\n"
            "SERVER is a URL, or a server named in the workflow (--workflow) or in the\n"
            "{\"mcpServers\": {...}} file (--config; default $TROUPE_MCP_CONFIG, else .mcp.json);\n"
            "its `auth` member (client_id, client_secret, scope, ...) is used.\n"
            "\n"
            "options:\n"
            "  --workflow FILE      the workflow that names SERVER\n"
            "  --config FILE        the mcpServers file that names SERVER\n"
            "  --timeout S          seconds to wait for the browser (default %d)\n"
            "  -h, --help           show this help\n",
            LOGIN_DEFAULT_TIMEOUT_S);
}

static void logout_usage(FILE *out)
{
    fprintf(out,
            "usage: troupe mcp logout SERVER [--workflow FILE | --config FILE]\n"
            "\n"
            "Removes the stored tokens of SERVER (a URL or a name, as for login), telling the\n"
            "authorization server to revoke them when it offers revocation (best effort).\n"
            "\n"
            "options:\n"
            "  --workflow FILE      the workflow that names SERVER\n"
            "  --config FILE        the mcpServers file that names SERVER\n"
            "  -h, --help           show this help\n");
}

static void status_usage(FILE *out)
{
    fprintf(out, "usage: troupe mcp auth status [--json]\n"
                 "\n"
                 "Lists the stored credentials: resource, authorization server (issuer), client,\n"
                 "scope, expiry and whether a refresh token is kept. Never a token or a secret.\n"
                 "\n"
                 "options:\n"
                 "  --json               a JSON array\n"
                 "  -h, --help           show this help\n");
}

/* The server a login or logout is about: its name, URL and `auth` member. */
struct auth_target {
    const char *name;
    char *url;
    const cJSON *auth; /* borrowed from doc or wf; NULL when none */
    cJSON *doc;
    struct workflow *wf;
};

static void auth_target_release(struct auth_target *t)
{
    free(t->url);
    cJSON_Delete(t->doc);
    workflow_free(&t->wf);
}

/* Finds name as a URL, in workflow_path, or in config_path's mcpServers. Prints why not. */
static int auth_target_find(struct auth_target *t, const char *name, const char *workflow_path,
                            const char *config_path)
{
    struct tr_error err = {0};
    const cJSON *entry = NULL;
    const char *where;

    t->name = name;
    if (strncmp(name, "https://", 8) == 0 || strncmp(name, "http://", 7) == 0) {
        t->url = xstrdup(name);
        return CLI_OK;
    }
    if (workflow_path) {
        where = workflow_path;
        if (workflow_load(workflow_path, &t->wf, &err) < 0) {
            cli_error("%s", err.message);
            return CLI_USAGE;
        }
        for (size_t i = 0; i < workflow_server_count(t->wf); i++)
            if (strcmp(workflow_server_name(t->wf, i), name) == 0)
                entry = workflow_server_config(t->wf, i);
    } else {
        where = config_path ? config_path : getenv("TROUPE_MCP_CONFIG");
        if (!where)
            where = ".mcp.json";
        char *text = NULL;
        size_t len = 0;
        if (!config_path && !getenv("TROUPE_MCP_CONFIG") && access(where, F_OK) < 0) {
            cli_error("'%s' is not a URL (http:// or https://), and no file names servers: give "
                      "the server's URL, or --workflow FILE (or --config FILE) that names it",
                      name);
            return CLI_USAGE;
        }
        if (tr_file_read(where, 4u << 20, &text, &len, &err) < 0) {
            cli_error("%s", err.message);
            return CLI_USAGE;
        }
        t->doc = cJSON_ParseWithLength(text, len);
        free(text);
        entry = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(t->doc, "mcpServers"), name);
    }
    if (!cJSON_IsObject(entry)) {
        cli_error("%s: no server named '%s'", where, name);
        return CLI_USAGE;
    }
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(entry, "url");
    if (!cJSON_IsString(url)) {
        cli_error("%s: server '%s' has no url: only HTTP servers use OAuth", where, name);
        return CLI_USAGE;
    }
    t->auth = cJSON_GetObjectItemCaseSensitive(entry, "auth");
    struct tr_buf missing;
    tr_buf_init(&missing, 0);
    unset_references(url, &missing);
    unset_references(t->auth, &missing);
    if (missing.len) {
        cli_error("%s: server '%s': environment variables not set: %s", where, name, missing.data);
        tr_buf_release(&missing);
        return CLI_USAGE;
    }
    tr_buf_release(&missing);
    t->url = expand(url->valuestring);
    return CLI_OK;
}

/* Parses SERVER [--workflow FILE] [--config FILE] [--timeout S] [--json] after the
   subcommand's name; returns -1 to go on, or the exit status. */
struct auth_args {
    const char *server, *workflow, *config;
    int timeout_s;
    bool json;
};

static int parse_auth_args(int argc, char **argv, struct cli_common *common, int max_positional,
                           void (*print_usage)(FILE *out), struct auth_args *a)
{
    enum { OPT_WORKFLOW = 2100, OPT_CONFIG };
    static const struct option options[] = {
        {"workflow", required_argument, NULL, OPT_WORKFLOW},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"timeout", required_argument, NULL, CLI_OPT_TIMEOUT},
        {"json", no_argument, NULL, CLI_OPT_JSON},
        CLI_COMMON_OPTIONS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    a->timeout_s = LOGIN_DEFAULT_TIMEOUT_S;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_WORKFLOW:
            a->workflow = optarg;
            break;
        case OPT_CONFIG:
            a->config = optarg;
            break;
        case CLI_OPT_TIMEOUT: {
            long s;
            if (print_usage != login_usage) {
                cli_error("--timeout is an option of 'troupe mcp login'");
                return CLI_USAGE;
            }
            if (cli_parse_int("--timeout", optarg, 1, 86400, &s) < 0)
                return CLI_USAGE;
            a->timeout_s = (int)s;
            break;
        }
        case CLI_OPT_JSON:
            a->json = true;
            break;
        default:
            if (cli_common_option(common, opt, optarg))
                break;
            return cli_usage(opt, print_usage);
        }
    }
    if (a->workflow && a->config) {
        cli_error("%s: --workflow and --config both name servers: give one", argv[0]);
        return CLI_USAGE;
    }
    if (argc - optind != max_positional) {
        if (argc - optind > max_positional)
            cli_error("%s: unexpected argument '%s'%s", argv[0], argv[optind + max_positional],
                      max_positional ? " (one SERVER at a time)" : "");
        print_usage(stderr);
        return CLI_USAGE;
    }
    a->server = max_positional ? argv[optind] : NULL;
    return -1;
}

struct login_browser {
    struct cli_loopback *loopback;
    const char *server;
    int timeout_s;
};

/* The person's part: print the URL (nothing is opened for them), wait for the redirect. */
static int login_authorize(void *userdata, const char *authorization_url, char **ret_redirect,
                           struct tr_error *err)
{
    struct login_browser *b = userdata;
    /* The state the authorization server must send back: any other callback is a stranger's. */
    const char *query = strchr(authorization_url, '?');
    const char *state = query ? strstr(query, "&state=") : NULL;
    if (!state && query && strncmp(query + 1, "state=", 6) == 0)
        state = query;
    char *expected = state ? xstrndup(state + 7, strcspn(state + 7, "&#")) : NULL;
    cli_loopback_expect_state(b->loopback, expected);
    free(expected);
    fprintf(stderr,
            "To authorize troupe for '%s', open this URL in a browser:\n\n    %s\n\n"
            "Waiting up to %d s for the redirect to %s ...\n",
            b->server, authorization_url, b->timeout_s, cli_loopback_redirect_uri(b->loopback));
    fflush(stderr);
    return cli_loopback_wait(b->loopback, b->timeout_s, ret_redirect, err);
}

static int mcp_login(int argc, char **argv, struct cli_common *common)
{
    struct auth_args a = {0};
    struct auth_target t = {0};
    struct tr_error err = {0};
    struct login_browser browser = {0};
    char *issuer = NULL;
    int rc = parse_auth_args(argc, argv, common, 1, login_usage, &a);

    if (rc >= 0)
        return rc;
    if ((rc = auth_target_find(&t, a.server, a.workflow, a.config)) != CLI_OK)
        goto out;
    if (cli_loopback_start(&browser.loopback, &err) < 0) {
        cli_error("%s", err.message);
        rc = CLI_FAILED;
        goto out;
    }
    browser.server = t.name;
    browser.timeout_s = a.timeout_s;
    const struct auth_user_agent user_agent = {
        .redirect_uri = cli_loopback_redirect_uri(browser.loopback),
        .authorize = login_authorize,
        .userdata = &browser,
    };
    const struct auth_options options = {
        .server_name = t.name,
        .resource_url = t.url,
        .config = t.auth,
        .expand = expand,
        .user_agent = &user_agent,
    };
    if (auth_login(&options, &issuer, &err) < 0) {
        cli_error("login to '%s' failed: %s", t.name, err.message);
        rc = CLI_FAILED;
        goto out;
    }
    printf("Logged in to %s (authorization server %s); tokens stored (troupe mcp auth "
           "status)\n",
           t.url, issuer);
    rc = CLI_OK;
out:
    free(issuer);
    cli_loopback_free(&browser.loopback);
    auth_target_release(&t);
    return rc;
}

static int mcp_logout(int argc, char **argv, struct cli_common *common)
{
    struct auth_args a = {0};
    struct auth_target t = {0};
    struct tr_error err = {0};
    int revoked = 0;
    int rc = parse_auth_args(argc, argv, common, 1, logout_usage, &a);

    if (rc >= 0)
        return rc;
    if ((rc = auth_target_find(&t, a.server, a.workflow, a.config)) != CLI_OK)
        goto out;
    const struct auth_options options = {
        .server_name = t.name, .resource_url = t.url, .config = t.auth, .expand = expand};
    if (auth_logout(&options, &revoked, &err) < 0) {
        cli_error("%s", err.message);
        rc = CLI_FAILED;
        goto out;
    }
    printf("Logged out of %s: stored tokens removed%s\n", t.url,
           revoked ? ", and revoked by the authorization server"
                   : " (the authorization server revoked nothing: it offers no revocation, or "
                     "refused)");
    rc = CLI_OK;
out:
    auth_target_release(&t);
    return rc;
}

static int mcp_auth_status(int argc, char **argv, struct cli_common *common)
{
    struct auth_args a = {0};
    struct tr_error err = {0};
    cJSON *entries = NULL;
    int rc = parse_auth_args(argc, argv, common, 0, status_usage, &a);

    if (rc >= 0)
        return rc;
    if (auth_store_status(NULL, &entries, &err) < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    if (a.json) {
        print_json(entries);
    } else if (!cJSON_GetArraySize(entries)) {
        printf("no stored credentials\n");
    } else {
        const cJSON *e;
        time_t now = time(NULL);
        cJSON_ArrayForEach(e, entries)
        {
            double expires = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "expires_at"));
            char when[64] = "unknown";
            if (expires > 0) {
                time_t at = (time_t)expires;
                struct tm tm;
                strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&at, &tm));
                if (at <= now)
                    strcat(when, " (expired)");
            }
            printf("%s\n  issuer:        %s\n  client_id:     %s\n", str(e, "resource"),
                   str(e, "issuer"), str(e, "client_id"));
            if (str(e, "scope")[0]) /* none asked for, none granted: no line */
                printf("  scope:         %s\n", str(e, "scope"));
            printf("  expires:       %s\n  refresh token: %s\n", when,
                   cJSON_IsTrue(cJSON_GetObjectItem(e, "refresh_token")) ? "yes" : "no");
        }
    }
    cJSON_Delete(entries);
    return CLI_OK;
}

int cli_mcp(int argc, char **argv, struct cli_common *common)
{
    /* Credentials: their own subcommands and options, the word first. */
    if (argc > 1 && strcmp(argv[1], "login") == 0)
        return mcp_login(argc - 1, argv + 1, common);
    if (argc > 1 && strcmp(argv[1], "logout") == 0)
        return mcp_logout(argc - 1, argv + 1, common);
    if (argc > 2 && strcmp(argv[1], "auth") == 0 && strcmp(argv[2], "status") == 0)
        return mcp_auth_status(argc - 2, argv + 2, common);
    if (argc > 1 && strcmp(argv[1], "auth") == 0) {
        if (argc == 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
            status_usage(stdout);
            return CLI_OK;
        }
        cli_error("mcp auth: the action is 'status' (see 'troupe mcp auth status --help')");
        return CLI_USAGE;
    }
    enum { OPT_URL = 2000, OPT_SERVER, OPT_CONFIG, OPT_HEADER, OPT_PROTOCOL };
    static const struct option options[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"server", required_argument, NULL, OPT_SERVER},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"header", required_argument, NULL, OPT_HEADER},
        {"protocol", required_argument, NULL, OPT_PROTOCOL},
        {"timeout", required_argument, NULL, CLI_OPT_TIMEOUT},
        {"json", no_argument, NULL, CLI_OPT_JSON},
        CLI_COMMON_OPTIONS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct target t = {0};
    bool json = false;
    int timeout_ms = MCP_DEFAULT_TIMEOUT_MS;
    /* Everything after "--" is the server's command: keep it away from getopt. */
    int end = 1;
    while (end < argc && strcmp(argv[end], "--") != 0)
        end++;
    size_t n_argv = 0;
    for (int k = end + 1; k < argc && n_argv < MAX_ITEMS; k++)
        t.argv[n_argv++] = argv[k];
    int opt;
    while ((opt = getopt_long(end, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_URL:
            t.url = optarg;
            break;
        case OPT_SERVER:
            t.server = optarg;
            break;
        case OPT_CONFIG:
            t.config = optarg;
            break;
        case OPT_PROTOCOL:
            t.protocol = optarg;
            break;
        case OPT_HEADER:
            if (t.n_headers < MAX_ITEMS)
                t.headers[t.n_headers++] = optarg; /* expanded below */
            break;
        case CLI_OPT_TIMEOUT: {
            long ms;
            if (cli_parse_int("--timeout", optarg, 1, 86400000, &ms) < 0)
                return CLI_USAGE;
            timeout_ms = (int)ms;
            break;
        }
        case CLI_OPT_JSON:
            json = true;
            break;
        default:
            if (cli_common_option(common, opt, optarg))
                break;
            return cli_usage(opt, usage);
        }
    }
    /* ACTION [TOOL [JSON]], in any order with the options. */
    const char *positional[3] = {0};
    size_t n_positional = 0;
    for (int k = optind; k < end; k++)
        if (n_positional < 3)
            positional[n_positional++] = argv[k];
    const char *action = positional[0];
    int sources = (t.url != NULL) + (t.server != NULL) + (n_argv > 0);
    if (!action || sources != 1 || (strcmp(action, "call") == 0 && !positional[1])) {
        usage(stderr);
        return CLI_USAGE;
    }
    int rc = expand_headers(&t);
    if (rc == CLI_OK && t.server)
        rc = load_config(&t);
    struct mcp_session *session = NULL;
    if (rc == CLI_OK)
        rc = open_target(&t, timeout_ms, &session);
    if (rc == CLI_OK) {
        if (strcmp(action, "info") == 0) {
            rc = do_info(session, json);
        } else if (strcmp(action, "tools") == 0) {
            rc = do_list(session, "tools/list", "tools", "name", timeout_ms, json);
        } else if (strcmp(action, "resources") == 0) {
            rc = do_list(session, "resources/list", "resources", "uri", timeout_ms, json);
            if (rc == CLI_OK && !json)
                printf("templates:\n");
            if (rc == CLI_OK)
                rc = do_list(session, "resources/templates/list", "resourceTemplates",
                             "uriTemplate", timeout_ms, json);
        } else if (strcmp(action, "prompts") == 0) {
            rc = do_list(session, "prompts/list", "prompts", "name", timeout_ms, json);
        } else if (strcmp(action, "call") == 0) {
            rc = do_call(session, positional[1], positional[2], timeout_ms, json);
        } else {
            cli_error("unknown action '%s' (see 'troupe mcp --help')", action);
            rc = CLI_USAGE;
        }
    }
    mcp_session_free(&session);
    for (size_t i = 0; i < t.n_headers; i++)
        free((char *)t.headers[i]);
    cJSON_Delete(t.built);
    cJSON_Delete(t.config_json);
    return rc;
}
