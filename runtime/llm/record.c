/*
 * llm/record.c: the neutral request as the audit log keeps it (llm_request_record). A
 * conversation's earlier answers and tool results are on record already (the scheduler's
 * ask.answer events), so a model call is recorded by what only it holds (the system message,
 * the schema, the tools, the user's messages and where they stand) and a SHA-256 of its whole
 * conversation: the log grows with each call's news, not with the conversation's square.
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "llm.h"

cJSON *llm_request_record(const cJSON *request)
{
    cJSON *record = cJSON_CreateObject();
    const cJSON *member, *message;
    int at = 0;

    cJSON_ArrayForEach(member, request)
    {
        if (member->string && strcmp(member->string, "messages") != 0)
            cJSON_AddItemToObject(record, member->string, cJSON_Duplicate(member, true));
    }
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(request, "messages");
    cJSON *users = cJSON_CreateArray();
    cJSON_ArrayForEach(message, messages)
    {
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(message, "role"));
        if (role && strcmp(role, "user") == 0) {
            cJSON *user = cJSON_CreateObject();
            cJSON_AddNumberToObject(user, "at", at);
            cJSON_AddItemToObject(
                user, "content",
                cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(message, "content"), true));
            cJSON_AddItemToArray(users, user);
        }
        at++;
    }
    char *text = messages ? tr_json_print(messages) : xstrdup("[]");
    unsigned char digest[crypto_hash_sha256_BYTES];
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    crypto_hash_sha256(digest, (const unsigned char *)text, strlen(text));
    sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
    free(text);
    cJSON_AddNumberToObject(record, "messages_count", at);
    cJSON_AddStringToObject(record, "messages_sha256", hex);
    cJSON_AddItemToObject(record, "user_messages", users);
    return record;
}
