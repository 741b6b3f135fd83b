/*
 * workflow/models.c: the language for models: `models:` (provider, endpoint, key reference,
 * sampling settings, price), a persona's model, `limits`, `sampling` and `elicitation`, the
 * run's `budget:`, an ask step's `output_schema`, their part of the plan, and the
 * command-line override of models. It calls no model: runtime/llm does, for the agent.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include "llm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What each provider (llm's protocols, by their names llm_protocol_names) defaults to: the
 * variables its own SDK reads, else its public endpoint. */
static const struct {
    const char *url_variable, *url, *key_variable;
} providers[] = {
    [LLM_OPENAI] = {"OPENAI_BASE_URL", "https://api.openai.com/v1", "OPENAI_API_KEY"},
    [LLM_ANTHROPIC] = {"ANTHROPIC_BASE_URL", "https://api.anthropic.com", "ANTHROPIC_API_KEY"},
};

/* The provider a model uses: as written, else from its id (claude* is Anthropic's). */
static enum llm_protocol model_provider(const struct wf_model *m)
{
    int found = m->provider ? llm_protocol_find(m->provider) : -1;

    if (found >= 0)
        return (enum llm_protocol)found;
    return strncmp(m->model, "claude", 6) == 0 ? LLM_ANTHROPIC : LLM_OPENAI;
}

/* ---- checking ----------------------------------------------------------------------------- */

/* A number member in [min, max] (above min when min_excluded); *ret untouched when absent. */
static int optional_number(struct wf_build *b, const cJSON *object, const char *key, double min,
                           bool min_excluded, double max, const char *context, double *ret)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);

    if (!item)
        return 0;
    if (!cJSON_IsNumber(item))
        return wf_problem(b->wf, item, false, "%s'%s' must be a number, not %s", context, key,
                          wf_kind_name(item));
    if (!(item->valuedouble >= min && item->valuedouble <= max) ||
        (min_excluded && item->valuedouble == min))
        return wf_problem(b->wf, item, false,
                          "%s'%s' is out of range: it must be %s %g and at most %g, not %.17g",
                          context, key, min_excluded ? "above" : "at least", min, max,
                          item->valuedouble);
    *ret = item->valuedouble;
    return 0;
}

/* Model names are keys persona `model:` values use, and may be model ids (gpt-4o, llama3:8b,
 * org/model); model ids (written, bare or given on the command line) are of the same kind. */
#define MODEL_NAME_RULE "[A-Za-z0-9_.:/@+-]{1,256}"
static bool model_name_valid_n(const char *name, size_t n)
{
    if (n == 0 || n > 256)
        return false;
    for (const char *p = name; p < name + n; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              (*p && strchr("_.:/@+-", *p))))
            return false;
    return true;
}

static bool model_name_valid(const char *name)
{
    return model_name_valid_n(name, strlen(name));
}

/*
 * A base URL as written (or given to --model-url): http(s)://... or ${env:NAME}... (as a
 * server's url), its ${env:NAME} parts well formed. A URL without references is checked as
 * libcurl will fetch it (llm_base_url_problem) and may hold no credentials; one with
 * references is checked so once their values are known (workflow_check_run).
 */
static bool url_written(const char *url)
{
    return !strncmp(url, "http://", 7) || !strncmp(url, "https://", 8) ||
           !strncmp(url, "${env:", 6);
}

static const char *url_problem(const char *url)
{
    if (!url_written(url))
        return "must start with http://, https:// or a ${env:NAME} reference";
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return "must not hold white space or control characters";
    if (!wf_env_well_formed(url))
        return "holds a malformed environment reference: write ${env:NAME} with NAME of "
               "[A-Za-z_][A-Za-z0-9_]*";
    if (!strstr(url, "${env"))
        return llm_base_url_problem(url, false);
    if (wf_env_url_userinfo(url))
        return LLM_BASE_URL_USERINFO;
    return NULL;
}

static int build_price(struct wf_build *b, const cJSON *node, struct wf_model *m,
                       const char *context)
{
    static const char *const keys[] = {"input", "output", NULL};
    char inner[300];
    int rc;

    snprintf(inner, sizeof(inner), "%sprice: ", context);
    if ((rc = wf_expect_mapping(b, node, context)) < 0 ||
        (rc = wf_check_keys(b, node, keys, inner)) < 0 ||
        (rc = optional_number(b, node, "input", 0, false, 1e9, inner, &m->price_input)) < 0 ||
        (rc = optional_number(b, node, "output", 0, false, 1e9, inner, &m->price_output)) < 0)
        return rc;
    m->has_price = true;
    return 0;
}

static void set_string(char **slot, const char *value)
{
    free(*slot);
    *slot = value ? xstrdup(value) : NULL;
}

static int build_model(struct wf_build *b, const cJSON *node, struct wf_model *m)
{
    static const char *const keys[] = {"provider",   "base_url", "model", "api_key", "temperature",
                                       "max_tokens", "timeout",  "price", NULL};
    struct workflow *wf = b->wf;
    const char *provider = NULL, *base_url = NULL, *model = NULL, *api_key = NULL;
    const cJSON *item;
    char context[256];
    int rc;

    snprintf(context, sizeof(context), "model '%s': ", node->string);
    if (!model_name_valid(node->string))
        return wf_problem(wf, node, true, "model name '%s' must match " MODEL_NAME_RULE,
                          node->string);
    if ((rc = wf_expect_mapping(b, node, "models: ")) < 0 ||
        (rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    if ((rc = wf_optional_string(b, node, "provider", context, &provider)) < 0 ||
        (rc = wf_optional_string(b, node, "base_url", context, &base_url)) < 0 ||
        (rc = wf_optional_string(b, node, "model", context, &model)) < 0 ||
        (rc = wf_optional_string(b, node, "api_key", context, &api_key)) < 0)
        return rc;
    if (provider && llm_protocol_find(provider) < 0)
        return wf_problem(wf, cJSON_GetObjectItemCaseSensitive(node, "provider"), false,
                          "%s'provider' must be 'openai' (chat completions, and every server "
                          "compatible with it) or 'anthropic' (the Messages API), not '%s'",
                          context, provider);
    if (model && !model_name_valid(model))
        return wf_problem(wf, cJSON_GetObjectItemCaseSensitive(node, "model"), false,
                          "%s'model' must be a model id of " MODEL_NAME_RULE ", not '%s'", context,
                          model);
    if (base_url && url_problem(base_url))
        return wf_problem(wf, cJSON_GetObjectItemCaseSensitive(node, "base_url"), false,
                          "%s'base_url' %s", context, url_problem(base_url));
    /* The message never repeats the value: it may be the key itself. */
    if (api_key && !wf_env_is_reference(api_key))
        return wf_problem(wf, cJSON_GetObjectItemCaseSensitive(node, "api_key"), false,
                          "%s'api_key' must be a ${env:NAME} reference, not a literal key: put "
                          "the key in an environment variable and write api_key: ${env:NAME}",
                          context);
    if ((rc = optional_number(b, node, "temperature", 0, false, 2, context, &m->temperature)) < 0 ||
        (rc = wf_optional_integer(b, node, "max_tokens", 1, 10000000, context, &m->max_tokens)) <
            0 ||
        (rc = wf_optional_duration(b, node, "timeout", context, &m->timeout_ms)) < 0)
        return rc;
    m->has_temperature = cJSON_HasObjectItem(node, "temperature");
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "price")) != NULL &&
        (rc = build_price(b, item, m, context)) < 0)
        return rc;
    set_string(&m->provider, provider);
    set_string(&m->model, model ? model : node->string);
    set_string(&m->base_url, base_url);
    set_string(&m->api_key, api_key);
    return 0;
}

static long model_find(const struct workflow *wf, const char *name)
{
    for (size_t i = 0; i < wf->model_count; i++)
        if (!strcmp(wf->models[i].name, name))
            return (long)i;
    return -1;
}

static struct wf_model *model_add(struct workflow *wf, const char *name)
{
    struct wf_model *m;

    wf->models = xrealloc(wf->models, (wf->model_count + 1) * sizeof(*wf->models));
    m = &wf->models[wf->model_count++];
    memset(m, 0, sizeof(*m));
    m->name = xstrdup(name);
    m->model = xstrdup(name);
    return m;
}

void wf_build_models(struct wf_build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;

    if (wf_expect_mapping(b, node, "") < 0)
        return;
    if (!node->child) {
        wf_problem(wf, node, true, "'models' must not be empty");
        return;
    }
    wf->has_models = true;
    cJSON_ArrayForEach(item, node)
    {
        /* A broken model keeps its name, so that personas naming it are not blamed. */
        (void)build_model(b, item, model_add(wf, item->string));
    }
}

void wf_build_budget(struct wf_build *b, const cJSON *node)
{
    static const char *const keys[] = {"max_tokens", "max_cost", NULL};
    struct workflow *wf = b->wf;

    if (wf_expect_mapping(b, node, "") < 0 || wf_check_keys(b, node, keys, "budget: ") < 0 ||
        wf_optional_integer(b, node, "max_tokens", 1, 1000000000000L,
                            "budget: ", &wf->budget.max_tokens) < 0 ||
        optional_number(b, node, "max_cost", 0, true, 1e12, "budget: ", &wf->budget.max_cost) < 0)
        return;
    wf->has_budget = true;
}

/* ---- personas ----------------------------------------------------------------------------- */

int wf_build_persona_limits(struct wf_build *b, const cJSON *node, struct wf_persona *persona,
                            const char *context)
{
    static const char *const keys[] = {
        "timeout", "max_turns", "max_tool_calls", "max_tokens", "max_cost", "max_time", NULL};
    char inner[300];
    int rc;

    snprintf(inner, sizeof(inner), "%slimits: ", context);
    if ((rc = wf_expect_mapping(b, node, context)) < 0 ||
        (rc = wf_check_keys(b, node, keys, inner)) < 0 ||
        (rc = wf_optional_duration(b, node, "timeout", inner, &persona->timeout_ms)) < 0 ||
        (rc = wf_optional_integer(b, node, "max_turns", 1, 100000, inner, &persona->max_turns)) <
            0 ||
        (rc = wf_optional_integer(b, node, "max_tool_calls", 1, 1000000, inner,
                                  &persona->max_tool_calls)) < 0 ||
        (rc = wf_optional_integer(b, node, "max_tokens", 1, 100000000, inner,
                                  &persona->max_tokens)) < 0 ||
        (rc = optional_number(b, node, "max_cost", 0, true, 1e12, inner, &persona->max_cost)) < 0 ||
        (rc = wf_optional_duration(b, node, "max_time", inner, &persona->max_time_ms)) < 0)
        return rc;
    return 0;
}

/* The model a persona names: a `models:` entry (the only choice when there are any), else a
 * bare model id with every default. */
static int resolve_persona_model(struct wf_build *b, const cJSON *node, struct wf_persona *persona,
                                 const char *context)
{
    struct workflow *wf = b->wf;
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(node, "model");
    long found = model_find(wf, persona->model);
    char hint[160];

    if (found < 0 && wf->has_models) {
        const char **names = xcalloc(wf->model_count + 1, sizeof(*names));
        for (size_t i = 0; i < wf->model_count; i++)
            names[i] = wf->models[i].name;
        int rc =
            wf_problem(wf, item, false,
                       "%sunknown model '%s'%s: a workflow with 'models' names each model there",
                       context, persona->model,
                       wf_suggestion(persona->model, names, wf->model_count, hint, sizeof(hint)));
        free(names);
        return rc;
    }
    if (found < 0) {
        if (!model_name_valid(persona->model))
            return wf_problem(wf, item, false,
                              "%s'model' must be a model id of " MODEL_NAME_RULE ", not '%s'",
                              context, persona->model);
        model_add(wf, persona->model)->implicit = true;
        found = (long)wf->model_count - 1;
    }
    persona->model_index = (size_t)found;
    return 0;
}

static int build_sampling(struct wf_build *b, const cJSON *node, struct wf_persona *persona,
                          const char *context)
{
    static const char *const keys[] = {"allow", "max_tokens", "max_requests", NULL};
    const cJSON *allow = cJSON_GetObjectItemCaseSensitive(node, "allow");
    char inner[300];
    int rc;

    snprintf(inner, sizeof(inner), "%ssampling: ", context);
    if ((rc = wf_expect_mapping(b, node, context)) < 0 ||
        (rc = wf_check_keys(b, node, keys, inner)) < 0 ||
        (rc = wf_optional_integer(b, node, "max_tokens", 1, 10000000, inner,
                                  &persona->sampling_max_tokens)) < 0 ||
        (rc = wf_optional_integer(b, node, "max_requests", 1, 1000, inner,
                                  &persona->sampling_max_requests)) < 0)
        return rc;
    if (allow && !cJSON_IsBool(allow))
        return wf_problem(b->wf, allow, false, "%s'allow' must be true or false, not %s", inner,
                          wf_kind_name(allow));
    persona->has_sampling = true;
    persona->sampling_allow = cJSON_IsTrue(allow);
    if (persona->sampling_allow && !persona->model)
        return wf_problem(b->wf, allow, true,
                          "%s'allow' needs a model: the persona's model answers a server's "
                          "sampling requests, and persona '%s' has no 'model'",
                          inner, persona->name);
    return 0;
}

/* An answer to one field of an elicitation form: what the form's fields take. */
static bool answer_valid(const cJSON *value)
{
    const cJSON *item;

    if (cJSON_IsString(value) || cJSON_IsNumber(value) || cJSON_IsBool(value))
        return true;
    if (!cJSON_IsArray(value))
        return false;
    cJSON_ArrayForEach(item, value)
    {
        if (!cJSON_IsString(item))
            return false;
    }
    return true;
}

static int build_elicitation(struct wf_build *b, const cJSON *node, struct wf_persona *persona,
                             const char *context)
{
    static const char *const keys[] = {"answers", "otherwise", NULL};
    struct workflow *wf = b->wf;
    const cJSON *answers = cJSON_GetObjectItemCaseSensitive(node, "answers");
    const cJSON *otherwise = cJSON_GetObjectItemCaseSensitive(node, "otherwise");
    const cJSON *server, *field;
    char inner[300];
    int rc;

    snprintf(inner, sizeof(inner), "%selicitation: ", context);
    if ((rc = wf_expect_mapping(b, node, context)) < 0 ||
        (rc = wf_check_keys(b, node, keys, inner)) < 0)
        return rc;
    if (otherwise && (!cJSON_IsString(otherwise) || (strcmp(otherwise->valuestring, "decline") &&
                                                     strcmp(otherwise->valuestring, "cancel"))))
        return wf_problem(wf, otherwise, false, "%s'otherwise' must be 'decline' or 'cancel'",
                          inner);
    if (answers && (rc = wf_expect_mapping(b, answers, inner)) < 0)
        return rc;
    cJSON_ArrayForEach(server, answers)
    {
        if (!wf_persona_holds(wf, persona, server->string))
            return wf_problem(wf, server, true,
                              "%sanswers for server '%s', not one of the persona's servers", inner,
                              server->string);
        if ((rc = wf_expect_mapping(b, server, inner)) < 0)
            return rc;
        cJSON_ArrayForEach(field, server)
        {
            if (!answer_valid(field))
                return wf_problem(wf, field, false,
                                  "%sanswer '%s' of server '%s' must be a string, a number, "
                                  "true or false, or a list of strings, not %s",
                                  inner, field->string, server->string, wf_kind_name(field));
        }
    }
    persona->elicitation = node;
    return 0;
}

int wf_build_persona_model(struct wf_build *b, const cJSON *node, struct wf_persona *persona,
                           const char *context)
{
    const cJSON *item;
    int rc = 0;

    if (persona->model && resolve_persona_model(b, node, persona, context) < 0)
        rc = TR_EINVAL;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "sampling")) != NULL &&
        build_sampling(b, item, persona, context) < 0)
        rc = TR_EINVAL;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "elicitation")) != NULL &&
        build_elicitation(b, item, persona, context) < 0)
        rc = TR_EINVAL;
    return rc;
}

/*
 * A cost limit counts what the models' prices say: one no price feeds could never be reached.
 * Refused where it is written: a persona's `limits.max_cost` when its model has no `price`;
 * the run's `budget.max_cost` when no model of the workflow has one.
 */
void wf_check_cost_limits(struct wf_build *b)
{
    struct workflow *wf = b->wf;
    const cJSON *personas = cJSON_GetObjectItemCaseSensitive(wf->doc.root, "personas");
    const cJSON *budget = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(wf->doc.root, "budget"), "max_cost");
    bool priced = false;

    for (size_t i = 0; i < wf->model_count; i++)
        priced |= wf->models[i].has_price;
    if (budget && wf->budget.max_cost > 0 && !priced && wf->model_count > 0)
        wf_problem(wf, budget, false,
                   "budget: max_cost needs prices: no model has a 'price', so no call costs "
                   "anything and the budget is never spent");
    for (size_t i = 0; i < wf->persona_count; i++) {
        const struct wf_persona *p = &wf->personas[i];
        if (p->max_cost <= 0 || p->model_index == SIZE_MAX || p->model_index >= wf->model_count ||
            wf->models[p->model_index].has_price)
            continue;
        const cJSON *at = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(personas, p->name),
                                             "limits"),
            "max_cost");
        if (at)
            wf_problem(wf, at, false,
                       "persona '%s': limits: max_cost needs a price: model '%s' has no "
                       "'price', so its calls cost nothing and the limit is never reached",
                       p->name, wf->models[p->model_index].name);
    }
}

void wf_persona_add_policies(const struct wf_persona *p, cJSON *object)
{
    if (p->timeout_ms || p->max_turns || p->max_tool_calls || p->max_tokens || p->max_cost ||
        p->max_time_ms) {
        cJSON *limits = cJSON_AddObjectToObject(object, "limits");
        if (p->timeout_ms)
            cJSON_AddNumberToObject(limits, "timeout_ms", (double)p->timeout_ms);
        if (p->max_turns)
            cJSON_AddNumberToObject(limits, "max_turns", (double)p->max_turns);
        if (p->max_tool_calls)
            cJSON_AddNumberToObject(limits, "max_tool_calls", (double)p->max_tool_calls);
        if (p->max_tokens)
            cJSON_AddNumberToObject(limits, "max_tokens", (double)p->max_tokens);
        if (p->max_cost)
            cJSON_AddNumberToObject(limits, "max_cost", p->max_cost);
        if (p->max_time_ms)
            cJSON_AddNumberToObject(limits, "max_time_ms", (double)p->max_time_ms);
    }
    if (p->has_sampling) {
        cJSON *sampling = cJSON_AddObjectToObject(object, "sampling");
        cJSON_AddBoolToObject(sampling, "allow", p->sampling_allow);
        if (p->sampling_max_tokens)
            cJSON_AddNumberToObject(sampling, "max_tokens", (double)p->sampling_max_tokens);
        if (p->sampling_max_requests)
            cJSON_AddNumberToObject(sampling, "max_requests", (double)p->sampling_max_requests);
    }
    if (p->elicitation) {
        const cJSON *answers = cJSON_GetObjectItemCaseSensitive(p->elicitation, "answers");
        const cJSON *otherwise = cJSON_GetObjectItemCaseSensitive(p->elicitation, "otherwise");
        cJSON *elicitation = cJSON_AddObjectToObject(object, "elicitation");
        cJSON_AddItemToObject(elicitation, "answers",
                              answers ? cJSON_Duplicate(answers, true) : cJSON_CreateObject());
        cJSON_AddStringToObject(elicitation, "otherwise",
                                otherwise ? otherwise->valuestring : "decline");
    }
}

/* ---- steps -------------------------------------------------------------------------------- */

/*
 * The node a compile error's "schema #/a/b: ..." points at inside the schema as written (the
 * deepest one found: the validator cuts long pointers), for its position.
 */
static const cJSON *schema_error_node(const cJSON *schema, const char *message)
{
    const char *p = strncmp(message, "schema #", 8) == 0 ? message + 8 : NULL;
    const cJSON *node = schema;

    while (p && *p == '/') {
        size_t n = strcspn(++p, "/: ");
        char *segment = xstrndup(p, n), *out = segment;
        for (const char *in = segment; *in; in++) /* ~1 is '/', ~0 is '~' */
            *out++ =
                in[0] == '~' && (in[1] == '0' || in[1] == '1') ? (*++in == '1' ? '/' : '~') : *in;
        *out = '\0';
        const cJSON *next = cJSON_IsArray(node) ? cJSON_GetArrayItem(node, atoi(segment))
                                                : cJSON_GetObjectItemCaseSensitive(node, segment);
        free(segment);
        if (!next)
            break;
        node = next;
        p += n;
    }
    return node;
}

int wf_build_output_schema(struct wf_build *b, const cJSON *node, size_t index, const char *context)
{
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(node, "output_schema");
    struct tr_error err = {0};

    if (!item)
        return 0;
    if (step->action != WORKFLOW_ACTION_ASK)
        return wf_problem(wf, item, true,
                          "%s'output_schema' is for 'ask' steps (the model's answer), not '%s' "
                          "steps",
                          context, workflow_action_name(step->action));
    /* true and false are JSON Schemas, but not ones a provider takes for an answer's form
       (OpenAI's response_format and Anthropic's tool input both want an object). */
    if (!cJSON_IsObject(item))
        return wf_problem(wf, item, false,
                          "%s'output_schema' must be a JSON Schema mapping, not %s%s", context,
                          wf_kind_name(item),
                          cJSON_IsBool(item) ? ": the providers take a schema object for the "
                                               "answer's form (write {} to take any JSON value)"
                                             : "");
    if (workflow_schema_compile(item, &step->output_schema, &err) < 0)
        return wf_problem(wf, schema_error_node(item, err.message), false, "%soutput_schema: %s",
                          context, err.message);
    step->output_schema_json = item;
    return 0;
}

/* ---- the models as the agent and the plan see them ---------------------------------------- */

/*
 * Adds member key: the value written, else "${env:VARIABLE}" when the variable is set now
 * (the vendor SDK's own), else fallback (NULL: nothing).
 */
static void add_default(cJSON *object, const char *key, const char *written, const char *variable,
                        const char *fallback)
{
    const char *value = getenv(variable);

    if (written) {
        cJSON_AddStringToObject(object, key, written);
    } else if (value && *value) {
        char *reference = xasprintf("${env:%s}", variable);
        cJSON_AddStringToObject(object, key, reference);
        free(reference);
    } else if (fallback) {
        cJSON_AddStringToObject(object, key, fallback);
    }
}

static cJSON *model_object(const struct wf_model *m)
{
    enum llm_protocol provider = model_provider(m);
    cJSON *object = cJSON_CreateObject();

    cJSON_AddStringToObject(object, "name", m->name);
    cJSON_AddStringToObject(object, "provider", llm_protocol_names[provider]);
    add_default(object, "base_url", m->base_url, providers[provider].url_variable,
                providers[provider].url);
    cJSON_AddStringToObject(object, "model", m->model);
    add_default(object, "api_key", m->api_key, providers[provider].key_variable, NULL);
    if (m->has_temperature)
        cJSON_AddNumberToObject(object, "temperature", m->temperature);
    if (m->max_tokens)
        cJSON_AddNumberToObject(object, "max_tokens", (double)m->max_tokens);
    if (m->timeout_ms)
        cJSON_AddNumberToObject(object, "timeout_ms", (double)m->timeout_ms);
    if (m->has_price) {
        cJSON *price = cJSON_AddObjectToObject(object, "price");
        cJSON_AddNumberToObject(price, "input", m->price_input);
        cJSON_AddNumberToObject(price, "output", m->price_output);
    }
    return object;
}

void wf_models_resolve(struct workflow *wf)
{
    for (size_t i = 0; i < wf->model_count; i++) {
        cJSON_Delete(wf->models[i].resolved);
        wf->models[i].resolved = model_object(&wf->models[i]);
    }
}

cJSON *wf_plan_models(const struct workflow *wf)
{
    cJSON *models;

    if (!wf->has_models)
        return NULL;
    models = cJSON_CreateObject();
    for (size_t i = 0; i < wf->model_count; i++) {
        const struct wf_model *m = &wf->models[i];
        cJSON *entry = cJSON_AddObjectToObject(models, m->name);
        /* What was written (the endpoint and key defaults are the environment's, at run
         * start), with the provider and model id the defaults give. */
        cJSON_AddStringToObject(entry, "provider", llm_protocol_names[model_provider(m)]);
        cJSON_AddStringToObject(entry, "model", m->model);
        if (m->base_url)
            cJSON_AddStringToObject(entry, "base_url", m->base_url);
        if (m->api_key)
            cJSON_AddStringToObject(entry, "api_key", m->api_key);
        if (m->has_temperature)
            cJSON_AddNumberToObject(entry, "temperature", m->temperature);
        if (m->max_tokens)
            cJSON_AddNumberToObject(entry, "max_tokens", (double)m->max_tokens);
        if (m->timeout_ms)
            cJSON_AddNumberToObject(entry, "timeout_ms", (double)m->timeout_ms);
        if (m->has_price) {
            cJSON *price = cJSON_AddObjectToObject(entry, "price");
            cJSON_AddNumberToObject(price, "input", m->price_input);
            cJSON_AddNumberToObject(price, "output", m->price_output);
        }
    }
    return models;
}

cJSON *wf_plan_budget(const struct workflow *wf)
{
    cJSON *budget;

    if (!wf->has_budget)
        return NULL;
    budget = cJSON_CreateObject();
    if (wf->budget.max_tokens)
        cJSON_AddNumberToObject(budget, "max_tokens", (double)wf->budget.max_tokens);
    if (wf->budget.max_cost)
        cJSON_AddNumberToObject(budget, "max_cost", wf->budget.max_cost);
    return budget;
}

void wf_models_free(struct workflow *wf)
{
    for (size_t i = 0; i < wf->model_count; i++) {
        struct wf_model *m = &wf->models[i];
        free(m->name);
        free(m->provider);
        free(m->model);
        free(m->base_url);
        free(m->api_key);
        cJSON_Delete(m->resolved);
    }
    free(wf->models);
}

/* ---- the command line's override ---------------------------------------------------------- */

/* Applies one override to wf and its children; counts the models it changed in *changed. */
static void override_tree(struct workflow *wf, const char *member, const char *name,
                          const char *value, size_t *changed)
{
    size_t before = *changed;

    for (size_t i = 0; i < wf->model_count; i++) {
        struct wf_model *m = &wf->models[i];
        if (name && strcmp(m->name, name))
            continue;
        set_string(!strcmp(member, "model") ? &m->model : &m->base_url, value);
        (*changed)++;
    }
    /* The plan lists every model once one is overridden, so that it says what ran. */
    if (*changed > before) {
        for (size_t i = 0; i < wf->model_count; i++)
            wf->models[i].implicit = false;
        wf->has_models = true;
        wf_models_resolve(wf);
    }
    for (size_t i = 0; i < wf->step_count; i++)
        if (wf->steps[i].child)
            override_tree(wf->steps[i].child, member, name, value, changed);
}

int workflow_models_override(struct workflow *wf, const char *member, const char *spec,
                             struct tr_error *err)
{
    bool is_model = !strcmp(member, "model");
    const char *option = is_model ? "--model" : "--model-url";
    const char *value = spec, *eq = strchr(spec, '=');
    char *name = NULL, *shown = NULL;
    size_t changed = 0;
    int rc = 0;

    if (!is_model && strcmp(member, "base_url"))
        return tr_error_set(err, TR_EINVAL, "no model member '%s' to override", member);
    /* NAME=VALUE names one model; a URL (it has a scheme) or a model id is for all. */
    if (eq && (is_model || (url_written(eq + 1) && model_name_valid_n(spec, eq - spec)))) {
        name = xstrndup(spec, (size_t)(eq - spec));
        value = eq + 1;
    }
    if (is_model && (!*value || !model_name_valid(value))) {
        shown = tr_text_escape(spec, 300);
        rc = tr_error_set(err, TR_EINVAL,
                          "%s wants [NAME=]ID with ID a model id of " MODEL_NAME_RULE ", "
                          "not '%s'",
                          option, shown);
        goto out;
    }
    if (!is_model && url_problem(value)) {
        /* A URL with an '@' may hold a password: it is not repeated. */
        shown = strchr(value, '@') ? NULL : tr_text_escape(value, 300);
        rc = tr_error_set(err, TR_EINVAL, "%s wants [NAME=]URL, and %s%s%s %s", option,
                          shown ? "'" : "the URL", shown ? shown : "", shown ? "'" : "",
                          url_problem(value));
        goto out;
    }
    override_tree(wf, member, name, value, &changed);
    if (!changed)
        rc = tr_error_set(err, TR_ENOTFOUND,
                          name ? "%s: the workflow has no model '%s' (a name under 'models', or "
                                 "a persona's model id)"
                               : "%s: the workflow uses no model%s",
                          option, name ? name : "");
out:
    free(shown);
    free(name);
    return rc;
}

/* ---- accessors ---------------------------------------------------------------------------- */

void workflow_persona_limits(const struct workflow *wf, size_t index, struct workflow_limits *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (index >= wf->persona_count)
        return;
    const struct wf_persona *p = &wf->personas[index];
    ret->max_turns = p->max_turns;
    ret->max_tool_calls = p->max_tool_calls;
    ret->max_tokens = p->max_tokens;
    ret->max_cost = p->max_cost;
    ret->max_time_ms = p->max_time_ms;
}

void workflow_budget(const struct workflow *wf, struct workflow_budget *ret)
{
    *ret = wf->budget;
}

const cJSON *workflow_persona_model(const struct workflow *wf, size_t index)
{
    if (index >= wf->persona_count || wf->personas[index].model_index == SIZE_MAX)
        return NULL;
    return wf->models[wf->personas[index].model_index].resolved;
}

void workflow_persona_price(const struct workflow *wf, size_t index, double *ret_input,
                            double *ret_output)
{
    *ret_input = 0;
    *ret_output = 0;
    if (index >= wf->persona_count || wf->personas[index].model_index == SIZE_MAX)
        return;
    *ret_input = wf->models[wf->personas[index].model_index].price_input;
    *ret_output = wf->models[wf->personas[index].model_index].price_output;
}

const struct workflow_schema *workflow_step_output_schema(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].output_schema : NULL;
}

const cJSON *workflow_step_output_schema_json(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].output_schema_json : NULL;
}
