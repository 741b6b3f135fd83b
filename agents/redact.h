/*
 * redact: blanks the run's secrets out of what an agent reports (audit events, results,
 * errors, log lines), so that a server that echoes a secret cannot put it into the database.
 *
 * It works on the text's meaning, not its bytes: in a JSON document it rewrites only the
 * strings (keys and values), each decoded first, so a document stays valid JSON and its
 * numbers, literals and layout are kept byte for byte. Inside a decoded string it looks for
 * each secret
 *   - as written, and each line of 8 bytes or more of a secret of several lines (a server's
 *     stderr comes line by line),
 *   - inside every JSON string literal the text holds (JSON in JSON, whatever escapes the
 *     encoder chose: \", \\, \/, \uXXXX), recursively up to REDACT_MAX_DEPTH levels,
 *   - JSON-escaped once or twice (cut-off fragments of JSON text), with non-ASCII as is or as
 *     \uXXXX,
 *   - percent-encoded (URLs, form bodies), decoded on the fly: each byte as itself, as %XX
 *     in either case, or a space as '+', in any mix (a '%' of the secret as %25),
 *   - base64-encoded (standard and URL alphabets) alone or inside a longer base64 text,
 * and replaces it with "[redacted:NAME]". Not covered: numbers (a number is never changed),
 * a secret split across several strings, and any other transformation (hashes, other
 * encodings, compression, a secret cut in pieces).
 *
 * Ownership: strings returned belong to the caller; arguments are borrowed.
 */
#ifndef TROUPE_REDACT_H
#define TROUPE_REDACT_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#define REDACT_MAX_DEPTH 8 /* levels of JSON inside JSON strings that are looked into */

struct redactor;

/* A redactor for the secrets in {NAME: value, ...} (values that are not strings, or empty,
 * are passed over); NULL or an empty object gives one that changes nothing. */
struct redactor *redactor_new(const cJSON *secrets);
/*
 * Adds a secret that became known at run time (a token an auth_client obtained) under name,
 * with every form of it. Returns false, changing nothing, for an empty value or one already
 * redacted.
 */
bool redactor_add(struct redactor *redactor, const char *name, const char *value);
/* Wipes the secrets from memory and frees; accepts NULL; NULLs the pointer. */
void redactor_free(struct redactor **redactor);
/* Whether it has any secret to look for. */
bool redactor_active(const struct redactor *redactor);

/*
 * text redacted: a new string, or NULL when text holds no secret (use it as it is). A JSON
 * object or array keeps its validity and every byte outside the strings that held a secret;
 * other text (an error message, a log line, a server's stderr) is free text.
 */
char *redactor_apply(const struct redactor *redactor, const char *text);

#endif
