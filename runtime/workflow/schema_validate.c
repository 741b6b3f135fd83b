/*
 * workflow/schema_validate.c: validates a JSON instance against a compiled schema (schema.c)
 * and says what is wrong: where in the instance (a JSON pointer), what, and the schema keyword
 * that says so. Evaluation depth and work are bounded, so a hostile schema (recursive $refs,
 * nested applicators) or instance (deep, wide) ends in an error, not a hang or a crash. It
 * collects no annotations (no keyword that needs them is supported).
 */
#include "schema-internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_PATH_MAX 512
#define SCHEMA_SHOWN_MAX 48 /* bytes of a string shown in a message */

struct validation {
    size_t work;
    /* > 0 inside anyOf, oneOf, not, if, contains and propertyNames: failures there are
       results, not errors, and the first one settles the answer. */
    int quiet;
    int bound; /* TR_ETOOBIG once a bound is hit: the validation stops */
    char **errors;
    size_t count, max;
    char path[SCHEMA_PATH_MAX];
    size_t path_len;
};

/* ---- reporting -------------------------------------------------------------------------- */

static void add_error(struct validation *v, char *line)
{
    if (v->count == v->max) {
        free(line);
        return;
    }
    v->errors = xrealloc(v->errors, (v->count + 1) * sizeof(*v->errors));
    v->errors[v->count++] = line;
}

static const char *path_text(const struct validation *v)
{
    return v->path_len ? v->path : "(root)";
}

static void report(struct validation *v, const struct schema_node *node, const char *keyword,
                   const char *fmt, ...) TR_PRINTF(4, 5);
static void report(struct validation *v, const struct schema_node *node, const char *keyword,
                   const char *fmt, ...)
{
    va_list ap;
    char *what;

    if (v->quiet || v->bound)
        return;
    va_start(ap, fmt);
    what = xvasprintf(fmt, ap);
    va_end(ap);
    add_error(v, xasprintf("%s: %s (%s%s%s)", path_text(v), what, node->where, keyword ? "/" : "",
                           keyword ? keyword : ""));
    free(what);
}

/* A bound was hit: the validation stops with this as its last error. */
static bool bound_hit(struct validation *v, const char *fmt, ...) TR_PRINTF(2, 3);
static bool bound_hit(struct validation *v, const char *fmt, ...)
{
    va_list ap;
    char *what;

    if (v->bound)
        return false;
    v->bound = TR_ETOOBIG;
    va_start(ap, fmt);
    what = xvasprintf(fmt, ap);
    va_end(ap);
    if (v->count == v->max && v->count > 0) {
        free(v->errors[v->count - 1]);
        v->count--;
    }
    add_error(v, xasprintf("%s: %s", path_text(v), what));
    free(what);
    return false;
}

/* Whether to stop at the first failure: when quiet, when a bound was hit, when full. */
static bool done(const struct validation *v)
{
    return v->quiet || v->bound || v->count >= v->max;
}

static bool charge(struct validation *v, size_t steps)
{
    v->work += steps;
    if (v->work > WORKFLOW_SCHEMA_MAX_WORK)
        return bound_hit(v, "validation stopped after %d steps (WORKFLOW_SCHEMA_MAX_WORK)",
                         WORKFLOW_SCHEMA_MAX_WORK);
    return !v->bound;
}

/*
 * Runs a pattern on text within the work budget: 1 or 0, -1 once a bound is hit. An
 * automaton's step (one thread on one byte, ~1.5 ns) costs a sixteenth of a validation step.
 */
#define SCHEMA_REGEX_STEPS_PER_STEP 16
static int search(struct validation *v, const struct schema_regex *regex, const char *text)
{
    size_t steps = 0,
           left = v->work < WORKFLOW_SCHEMA_MAX_WORK ? WORKFLOW_SCHEMA_MAX_WORK - v->work : 0;
    int found = schema_regex_search(regex, text, &steps, left * SCHEMA_REGEX_STEPS_PER_STEP);

    return charge(v, 1 + steps / SCHEMA_REGEX_STEPS_PER_STEP) ? found : -1;
}

/* Appends a segment to the instance path; returns the length to restore. */
static size_t path_push(struct validation *v, const char *key, long index)
{
    size_t old = v->path_len;
    char segment[SCHEMA_PATH_MAX];
    size_t n = 0;

    if (key) {
        for (const char *s = key; *s && n + 3 < sizeof(segment); s++) {
            if (*s == '~' || *s == '/') {
                segment[n++] = '~';
                segment[n++] = *s == '~' ? '0' : '1';
            } else {
                segment[n++] = *s;
            }
        }
        segment[n] = '\0';
    } else {
        n = (size_t)snprintf(segment, sizeof(segment), "%ld", index);
    }
    if (old + 1 + n + 1 <= sizeof(v->path)) {
        v->path[old] = '/';
        memcpy(v->path + old + 1, segment, n + 1);
        v->path_len = old + 1 + n;
    } else if (old + 5 <= sizeof(v->path) && strcmp(v->path + old - 4, "/...") != 0) {
        memcpy(v->path + old, "/...", 5);
        v->path_len = old + 4;
    }
    return old;
}

static void path_pop(struct validation *v, size_t old)
{
    v->path_len = old;
    v->path[old] = '\0';
}

/* A number as people write it: 3, 0.1, 1e+308. */
static void number_text(double x, char *buf, size_t size)
{
    snprintf(buf, size, "%.15g", x);
    if (strtod(buf, NULL) != x)
        snprintf(buf, size, "%.17g", x);
}

/* The instance shown in a message: a scalar as JSON (long strings cut), else its kind. */
static char *shown(const cJSON *json)
{
    if (cJSON_IsString(json)) {
        size_t n = strlen(json->valuestring);
        bool cut = n > SCHEMA_SHOWN_MAX;
        cJSON *copy;
        char *text, *out;

        if (cut) {
            n = SCHEMA_SHOWN_MAX;
            while (n > 0 && ((unsigned char)json->valuestring[n] & 0xC0) == 0x80)
                n--; /* not inside a UTF-8 sequence */
        }
        {
            char *prefix = xstrndup(json->valuestring, n);
            copy = cJSON_CreateString(prefix);
            free(prefix);
        }
        text = copy ? tr_json_print(copy) : NULL;
        cJSON_Delete(copy);
        if (!text)
            abort();
        out = cut ? xasprintf("%.*s...\"", (int)strlen(text) - 1, text) : xstrdup(text);
        free(text);
        return out;
    }
    if (cJSON_IsNumber(json)) {
        char buf[40];
        number_text(json->valuedouble, buf, sizeof(buf));
        return xstrdup(buf);
    }
    if (cJSON_IsObject(json))
        return xstrdup("the object");
    if (cJSON_IsArray(json))
        return xstrdup("the array");
    return xstrdup(cJSON_IsNull(json) ? "null" : cJSON_IsTrue(json) ? "true" : "false");
}

/* ---- JSON values: types, equality, hashing ------------------------------------------------ */

static bool is_integer(const cJSON *json)
{
    return cJSON_IsNumber(json) && isfinite(json->valuedouble) &&
           floor(json->valuedouble) == json->valuedouble;
}

static unsigned type_of(const cJSON *json)
{
    if (cJSON_IsNull(json))
        return SCHEMA_NULL;
    if (cJSON_IsBool(json))
        return SCHEMA_BOOLEAN;
    if (cJSON_IsObject(json))
        return SCHEMA_OBJECT;
    if (cJSON_IsArray(json))
        return SCHEMA_ARRAY;
    if (cJSON_IsNumber(json))
        return SCHEMA_NUMBER;
    if (cJSON_IsString(json))
        return SCHEMA_STRING;
    return 0;
}

static const char *type_name(unsigned bit)
{
    switch (bit) {
    case SCHEMA_NULL:
        return "null";
    case SCHEMA_BOOLEAN:
        return "boolean";
    case SCHEMA_OBJECT:
        return "object";
    case SCHEMA_ARRAY:
        return "array";
    case SCHEMA_NUMBER:
        return "number";
    case SCHEMA_STRING:
        return "string";
    default:
        return "integer";
    }
}

/* JSON equality: numbers by value (1 == 1.0), objects whatever their key order. */
static bool json_equal(struct validation *v, const cJSON *a, const cJSON *b, int depth)
{
    unsigned type = type_of(a);
    const cJSON *x;

    if (!charge(v, 1) || type != type_of(b))
        return false;
    if (depth > WORKFLOW_SCHEMA_MAX_DEPTH)
        return bound_hit(v, "values nested deeper than %d", WORKFLOW_SCHEMA_MAX_DEPTH);
    switch (type) {
    case SCHEMA_BOOLEAN:
        return cJSON_IsTrue(a) == cJSON_IsTrue(b);
    case SCHEMA_NUMBER:
        return a->valuedouble == b->valuedouble;
    case SCHEMA_STRING:
        return strcmp(a->valuestring, b->valuestring) == 0;
    case SCHEMA_ARRAY:
        for (x = a->child, b = b->child; x && b; x = x->next, b = b->next)
            if (!json_equal(v, x, b, depth + 1))
                return false;
        return !x && !b;
    case SCHEMA_OBJECT:
        if (cJSON_GetArraySize(a) != cJSON_GetArraySize(b))
            return false;
        cJSON_ArrayForEach(x, a)
        {
            const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
            if (!charge(v, (size_t)cJSON_GetArraySize(b)) || !y || !json_equal(v, x, y, depth + 1))
                return false;
        }
        return true;
    default:
        return true;
    }
}

static uint64_t hash_bytes(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3u;
    return h;
}

/* A hash that equal values share (json_equal's rules); deep values hash by their top. */
static uint64_t json_hash(const cJSON *json, int depth)
{
    uint64_t h = 0xCBF29CE484222325u ^ type_of(json);
    const cJSON *x;

    if (depth > 8)
        return h;
    if (cJSON_IsNumber(json)) {
        double d = json->valuedouble == 0 ? 0 : json->valuedouble; /* -0 == 0 */
        h = hash_bytes(h, &d, sizeof(d));
    } else if (cJSON_IsString(json)) {
        h = hash_bytes(h, json->valuestring, strlen(json->valuestring));
    } else if (cJSON_IsTrue(json)) {
        h = hash_bytes(h, "t", 1);
    } else if (cJSON_IsArray(json)) {
        cJSON_ArrayForEach(x, json) h = hash_bytes(h * 31, &(uint64_t){json_hash(x, depth + 1)}, 8);
    } else if (cJSON_IsObject(json)) {
        uint64_t sum = 0; /* order does not matter */
        cJSON_ArrayForEach(x, json) sum +=
            hash_bytes(json_hash(x, depth + 1), x->string, strlen(x->string));
        h = hash_bytes(h, &sum, sizeof(sum));
    }
    return h;
}

struct hashed {
    uint64_t hash;
    size_t index;
    const cJSON *item;
};

static int hashed_compare(const void *a, const void *b)
{
    const struct hashed *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Finds two equal items (by hash, then json_equal): O(n log n) unless hashes collide. */
static bool find_duplicate(struct validation *v, const cJSON *array, size_t *ret_first,
                           size_t *ret_second)
{
    size_t n = (size_t)cJSON_GetArraySize(array), i = 0;
    struct hashed *items;
    const cJSON *item;
    bool found = false;

    if (n < 2 || !charge(v, n * 8))
        return false;
    items = xcalloc(n, sizeof(*items));
    cJSON_ArrayForEach(item, array)
    {
        items[i] = (struct hashed){json_hash(item, 0), i, item};
        i++;
    }
    qsort(items, n, sizeof(*items), hashed_compare);
    for (i = 0; i + 1 < n && !found && !v->bound; i++)
        for (size_t j = i + 1; j < n && items[j].hash == items[i].hash && !found; j++)
            if (json_equal(v, items[i].item, items[j].item, 0)) {
                *ret_first = items[i].index;
                *ret_second = items[j].index;
                found = true;
            }
    free(items);
    return found;
}

static size_t code_points(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* ---- keywords ----------------------------------------------------------------------------- */

static bool validate(struct validation *v, const struct schema_node *node, const cJSON *json,
                     int depth);

/* Validates a child of json (key or index) against node, with the path extended. */
static bool validate_child(struct validation *v, const struct schema_node *node, const cJSON *child,
                           const char *key, long index, int depth)
{
    size_t old = path_push(v, key, index);
    bool ok = validate(v, node, child, depth + 1);
    path_pop(v, old);
    return ok;
}

/* Validates json against node as a question: no errors recorded, the answer returned. */
static bool matches(struct validation *v, const struct schema_node *node, const cJSON *json,
                    int depth)
{
    bool ok;
    v->quiet++;
    ok = validate(v, node, json, depth + 1);
    v->quiet--;
    return ok;
}

static bool check_type(struct validation *v, const struct schema_node *node, const cJSON *json)
{
    unsigned type = type_of(json);
    char names[128] = "";
    char *value;

    if (!node->types || (node->types & type) ||
        ((node->types & SCHEMA_INTEGER) && is_integer(json)))
        return true;
    for (unsigned bit = 1; bit <= SCHEMA_INTEGER; bit <<= 1) {
        if (node->types & bit) {
            size_t n = strlen(names);
            snprintf(names + n, sizeof(names) - n, "%s%s", n ? ", " : "", type_name(bit));
        }
    }
    if (type == SCHEMA_OBJECT || type == SCHEMA_ARRAY) {
        report(v, node, "type", "is an %s, not %s%s", type_name(type),
               strchr(names, ',') ? "one of " : "", names);
        return false;
    }
    value = shown(json);
    report(v, node, "type", "%s is a %s, not %s%s", value,
           type ? type_name(type) : "value of no JSON type", strchr(names, ',') ? "one of " : "",
           names);
    free(value);
    return false;
}

static bool check_values(struct validation *v, const struct schema_node *node, const cJSON *json)
{
    bool ok = true;
    char *value = NULL;

    if (node->enum_values) {
        const cJSON *item;
        bool found = false;
        cJSON_ArrayForEach(item, node->enum_values)
        {
            if ((found = json_equal(v, item, json, 0)) || v->bound)
                break;
        }
        if (!found) {
            value = shown(json);
            report(v, node, "enum", "%s is not one of the enum values", value);
            ok = false;
        }
    }
    if (node->has_const && (ok || !done(v)) && !json_equal(v, node->const_value, json, 0)) {
        if (!value)
            value = shown(json);
        report(v, node, "const", "%s is not the const value", value);
        ok = false;
    }
    free(value);
    return ok;
}

static bool check_number(struct validation *v, const struct schema_node *node, const cJSON *json)
{
    double x = json->valuedouble;
    char a[40], b[40];
    bool ok = true;

    number_text(x, a, sizeof(a));
#define NUMBER_RULE(has, failed, keyword, bound, fmt)                                              \
    do {                                                                                           \
        if (node->has && (failed)) {                                                               \
            number_text(node->bound, b, sizeof(b));                                                \
            report(v, node, keyword, fmt, a, b);                                                   \
            ok = false;                                                                            \
            if (done(v))                                                                           \
                return false;                                                                      \
        }                                                                                          \
    } while (0)
    NUMBER_RULE(has_minimum, x < node->minimum, "minimum", minimum, "%s is less than %s");
    NUMBER_RULE(has_maximum, x > node->maximum, "maximum", maximum, "%s is greater than %s");
    NUMBER_RULE(has_exclusive_minimum, x <= node->exclusive_minimum, "exclusiveMinimum",
                exclusive_minimum, "%s is not greater than %s");
    NUMBER_RULE(has_exclusive_maximum, x >= node->exclusive_maximum, "exclusiveMaximum",
                exclusive_maximum, "%s is not less than %s");
    if (node->has_multiple_of) {
        double q = x / node->multiple_of;
        /* Decimal multiples (0.0075 of 0.0001) are not exact in binary: a quotient within
           rounding of an integer counts. When the quotient overflows (1e308 / 0.5), the
           remainder, which fmod computes exactly, decides. */
        bool multiple = isfinite(q) ? fabs(q - round(q)) <= 1e-9 * fmax(1.0, fabs(q))
                                    : fmod(x, node->multiple_of) == 0;
        NUMBER_RULE(has_multiple_of, !multiple, "multipleOf", multiple_of,
                    "%s is not a multiple of %s");
    }
#undef NUMBER_RULE
    return ok;
}

static bool check_string(struct validation *v, const struct schema_node *node, const cJSON *json)
{
    const char *s = json->valuestring;
    bool ok = true;
    char *value;

    if (node->min_length >= 0 || node->max_length >= 0) {
        size_t n = code_points(s);
        if (!charge(v, n / 64))
            return false;
        if (node->min_length >= 0 && n < (size_t)node->min_length) {
            value = shown(json);
            report(v, node, "minLength", "%s is shorter than %ld characters", value,
                   node->min_length);
            free(value);
            ok = false;
        }
        if (node->max_length >= 0 && n > (size_t)node->max_length && (ok || !done(v))) {
            value = shown(json);
            report(v, node, "maxLength", "%s is longer than %ld characters", value,
                   node->max_length);
            free(value);
            ok = false;
        }
        if (!ok && done(v))
            return false;
    }
    if (node->pattern.regex) {
        int found = search(v, node->pattern.regex, s);
        if (found < 0)
            return false;
        if (!found) {
            value = shown(json);
            report(v, node, "pattern", "%s does not match the pattern \"%s\"", value,
                   node->pattern.source);
            free(value);
            ok = false;
        }
    }
    return ok;
}

static bool check_array(struct validation *v, const struct schema_node *node, const cJSON *json,
                        int depth)
{
    long count = cJSON_GetArraySize(json), index = 0, contained = 0;
    const cJSON *item;
    bool ok = true;

#define FAIL_AND_MAYBE_STOP()                                                                      \
    do {                                                                                           \
        ok = false;                                                                                \
        if (done(v))                                                                               \
            return false;                                                                          \
    } while (0)
    if (node->min_items >= 0 && count < node->min_items) {
        report(v, node, "minItems", "the array has %ld items, fewer than %ld", count,
               node->min_items);
        FAIL_AND_MAYBE_STOP();
    }
    if (node->max_items >= 0 && count > node->max_items) {
        report(v, node, "maxItems", "the array has %ld items, more than %ld", count,
               node->max_items);
        FAIL_AND_MAYBE_STOP();
    }
    if (node->unique_items) {
        size_t first = 0, second = 0;
        if (find_duplicate(v, json, &first, &second)) {
            report(v, node, "uniqueItems", "items %zu and %zu are equal", first, second);
            FAIL_AND_MAYBE_STOP();
        }
        if (v->bound)
            return false;
    }
    cJSON_ArrayForEach(item, json)
    {
        const struct schema_node *each = (size_t)index < node->prefix_items.count
                                             ? node->prefix_items.nodes[index]
                                             : node->items;
        if (each && !validate_child(v, each, item, NULL, index, depth))
            FAIL_AND_MAYBE_STOP();
        if (node->contains && matches(v, node->contains, item, depth))
            contained++;
        if (v->bound)
            return false;
        index++;
    }
    if (node->contains) {
        if (contained < node->min_contains) {
            if (node->min_contains == 1)
                report(v, node, "contains", "no item matches the schema of contains");
            else
                report(v, node, "minContains", "%ld items match contains, fewer than %ld",
                       contained, node->min_contains);
            FAIL_AND_MAYBE_STOP();
        }
        if (node->max_contains >= 0 && contained > node->max_contains) {
            report(v, node, "maxContains", "%ld items match contains, more than %ld", contained,
                   node->max_contains);
            FAIL_AND_MAYBE_STOP();
        }
    }
    return ok;
}

static int named_compare(const void *key, const void *named)
{
    return strcmp(key, ((const struct schema_named *)named)->name);
}

/* The schema `properties` gives the member name (they are sorted by name), or NULL. */
static const struct schema_node *property_schema(const struct schema_node *node, const char *name)
{
    const struct schema_named *found;

    if (node->property_count == 0)
        return NULL;
    found = bsearch(name, node->properties, node->property_count, sizeof(*found), named_compare);
    return found ? found->node : NULL;
}

static bool check_object(struct validation *v, const struct schema_node *node, const cJSON *json,
                         int depth)
{
    long count = cJSON_GetArraySize(json);
    const cJSON *member;
    bool ok = true;

    if (node->min_properties >= 0 && count < node->min_properties) {
        report(v, node, "minProperties", "the object has %ld properties, fewer than %ld", count,
               node->min_properties);
        FAIL_AND_MAYBE_STOP();
    }
    if (node->max_properties >= 0 && count > node->max_properties) {
        report(v, node, "maxProperties", "the object has %ld properties, more than %ld", count,
               node->max_properties);
        FAIL_AND_MAYBE_STOP();
    }
    for (size_t i = 0; i < node->required_count; i++) {
        if (!charge(v, (size_t)count))
            return false;
        if (!cJSON_GetObjectItemCaseSensitive(json, node->required[i])) {
            report(v, node, "required", "the required property \"%s\" is missing",
                   node->required[i]);
            FAIL_AND_MAYBE_STOP();
        }
    }
    for (size_t i = 0; i < node->dependent_required_count; i++) {
        const struct schema_dependency *d = &node->dependent_required[i];
        if (!charge(v, (size_t)count * (1 + d->count)))
            return false;
        if (!cJSON_GetObjectItemCaseSensitive(json, d->name))
            continue;
        for (size_t j = 0; j < d->count; j++) {
            if (!cJSON_GetObjectItemCaseSensitive(json, d->required[j])) {
                report(v, node, "dependentRequired",
                       "the property \"%s\" is required when \"%s\" is present", d->required[j],
                       d->name);
                FAIL_AND_MAYBE_STOP();
            }
        }
    }
    cJSON_ArrayForEach(member, json)
    {
        const struct schema_node *named = property_schema(node, member->string);
        bool matched = named != NULL;

        if (named && !validate_child(v, named, member, member->string, 0, depth))
            FAIL_AND_MAYBE_STOP();
        for (size_t i = 0; i < node->pattern_property_count && !v->bound; i++) {
            const struct schema_pattern *p = &node->pattern_properties[i];
            int found = search(v, p->regex, member->string);
            if (found < 0)
                return false;
            if (!found)
                continue;
            matched = true;
            if (!validate_child(v, p->node, member, member->string, 0, depth))
                FAIL_AND_MAYBE_STOP();
        }
        if (!matched && node->additional_properties &&
            !validate_child(v, node->additional_properties, member, member->string, 0, depth))
            FAIL_AND_MAYBE_STOP();
        if (node->property_names) {
            cJSON *name = cJSON_CreateStringReference(member->string);
            bool valid;
            if (!name)
                abort();
            valid = matches(v, node->property_names, name, depth);
            cJSON_Delete(name);
            if (!valid && !v->bound) {
                size_t old = path_push(v, member->string, 0);
                report(v, node, "propertyNames",
                       "the property name \"%s\" does not match the schema of propertyNames",
                       member->string);
                path_pop(v, old);
                FAIL_AND_MAYBE_STOP();
            }
        }
        if (v->bound)
            return false;
    }
    for (size_t i = 0; i < node->dependent_schema_count; i++) {
        if (!charge(v, (size_t)count))
            return false;
        if (cJSON_GetObjectItemCaseSensitive(json, node->dependent_schemas[i].name) &&
            !validate(v, node->dependent_schemas[i].node, json, depth + 1))
            FAIL_AND_MAYBE_STOP();
    }
    return ok;
}

static bool check_applicators(struct validation *v, const struct schema_node *node,
                              const cJSON *json, int depth)
{
    bool ok = true;

    if (node->ref && !validate(v, node->ref, json, depth + 1))
        FAIL_AND_MAYBE_STOP();
    for (size_t i = 0; i < node->all_of.count; i++)
        if (!validate(v, node->all_of.nodes[i], json, depth + 1))
            FAIL_AND_MAYBE_STOP();
    if (node->any_of.count) {
        bool any = false;
        for (size_t i = 0; i < node->any_of.count && !any && !v->bound; i++)
            any = matches(v, node->any_of.nodes[i], json, depth);
        if (!any && !v->bound)
            report(v, node, "anyOf", "matches none of the %zu schemas of anyOf",
                   node->any_of.count);
        if (!any)
            FAIL_AND_MAYBE_STOP();
    }
    if (node->one_of.count) {
        size_t first = SIZE_MAX, second = SIZE_MAX;
        for (size_t i = 0; i < node->one_of.count && second == SIZE_MAX && !v->bound; i++) {
            if (matches(v, node->one_of.nodes[i], json, depth)) {
                if (first == SIZE_MAX)
                    first = i;
                else
                    second = i;
            }
        }
        if (v->bound)
            return false;
        if (first == SIZE_MAX)
            report(v, node, "oneOf", "matches none of the %zu schemas of oneOf",
                   node->one_of.count);
        else if (second != SIZE_MAX)
            report(v, node, "oneOf", "matches schemas %zu and %zu of oneOf, not exactly one", first,
                   second);
        if (first == SIZE_MAX || second != SIZE_MAX)
            FAIL_AND_MAYBE_STOP();
    }
    if (node->not_schema) {
        bool matched = matches(v, node->not_schema, json, depth);
        if (v->bound)
            return false;
        if (matched) {
            report(v, node, "not", "matches the schema of not");
            FAIL_AND_MAYBE_STOP();
        }
    }
    if (node->if_schema) {
        bool condition = matches(v, node->if_schema, json, depth);
        const struct schema_node *branch = condition ? node->then_schema : node->else_schema;
        if (v->bound)
            return false;
        if (branch && !validate(v, branch, json, depth + 1))
            FAIL_AND_MAYBE_STOP();
    }
    return ok;
}
#undef FAIL_AND_MAYBE_STOP

static bool validate(struct validation *v, const struct schema_node *node, const cJSON *json,
                     int depth)
{
    bool ok = true;

    if (!charge(v, 1))
        return false;
    if (depth > WORKFLOW_SCHEMA_MAX_DEPTH)
        return bound_hit(v, "validation nested deeper than %d (a recursive $ref?)",
                         WORKFLOW_SCHEMA_MAX_DEPTH);
    if (node->is_boolean) {
        if (!node->boolean_value)
            report(v, node, NULL, "no value is allowed here (the schema is false)");
        return node->boolean_value;
    }
    /* Every keyword applies on its own (a failed `type` does not hide `required`), so that
       collecting errors finds them all; the first failure ends it when done(). */
    if (!check_type(v, node, json)) {
        ok = false;
        if (done(v))
            return false;
    }
    if ((node->enum_values || node->has_const) && !check_values(v, node, json)) {
        ok = false;
        if (done(v))
            return false;
    }
    if (cJSON_IsNumber(json))
        ok &= check_number(v, node, json);
    else if (cJSON_IsString(json))
        ok &= check_string(v, node, json);
    else if (cJSON_IsArray(json))
        ok &= check_array(v, node, json, depth);
    else if (cJSON_IsObject(json))
        ok &= check_object(v, node, json, depth);
    if (!ok && done(v))
        return false;
    return check_applicators(v, node, json, depth) && ok;
}

/* ---- the API --------------------------------------------------------------------------------- */

static int run(const struct workflow_schema *schema, const cJSON *instance, size_t max,
               struct validation *v)
{
    static const cJSON null_value = {.type = cJSON_NULL};

    v->max = max ? max : 1;
    validate(v, schema->root, instance ? instance : &null_value, 0);
    if (v->bound)
        return v->bound;
    return v->count ? TR_EINVAL : 0;
}

int workflow_schema_validate(const struct workflow_schema *schema, const cJSON *instance,
                             struct tr_error *err)
{
    struct validation *v = xcalloc(1, sizeof(*v));
    int rc = run(schema, instance, 1, v);

    if (rc < 0)
        tr_error_set(err, rc, "%s", v->errors[v->count - 1]);
    workflow_problems_free(v->errors, v->count);
    free(v);
    return rc;
}

int workflow_schema_errors(const struct workflow_schema *schema, const cJSON *instance, size_t max,
                           char ***ret_errors, size_t *ret_count)
{
    struct validation *v = xcalloc(1, sizeof(*v));
    int rc = run(schema, instance, max, v);

    *ret_errors = v->errors;
    *ret_count = v->count;
    free(v);
    return rc;
}
