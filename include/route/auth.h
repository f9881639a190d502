/* auth.h: the client token list and the Bearer check, one rule for every caller: /v1's default
 * authorize (route.check_bearer), the admin API and /metrics, and log redaction.
 *
 * The rule: the config value `authorization` is a comma-separated list; each entry is trimmed
 * of ASCII white space (space, tab, CR, LF) and empty entries are ignored. A header must start
 * with "Bearer" (case-sensitive, as the Go program checked); the rest, trimmed the same way,
 * must equal one entry, compared in constant time against every entry. */
#ifndef ROUTE_AUTH_H
#define ROUTE_AUTH_H

#include <stddef.h>

typedef struct auth_tokens auth_tokens_t;

/* NULL or "" gives an empty list (nothing is accepted). NULL only when out of memory. */
auth_tokens_t *auth_tokens_parse(const char *list);
void auth_tokens_free(auth_tokens_t *t);
size_t auth_tokens_count(const auth_tokens_t *t);
/* The i-th token (for redaction); NULL past the end. */
const char *auth_tokens_at(const auth_tokens_t *t, size_t i, size_t *len);

enum { AUTH_OK = 0, AUTH_NOT_BEARER = 1, AUTH_WRONG = 2 };

/* header may be NULL (missing). Returns AUTH_OK, AUTH_NOT_BEARER or AUTH_WRONG. */
int auth_check_bearer(const auth_tokens_t *t, const char *header, size_t len);
/* The client-facing message for a refusal ("wrong authorization header", ...). */
const char *auth_refusal_message(int verdict);
/* Browsers cannot set Authorization on a WebSocket: OpenAI's browser convention carries the
 * key as a subprotocol, Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.<key>.
 * The token of that entry (trimmed), with where the whole entry sits in value; NULL when the
 * list has none. */
#define AUTH_WS_PROTOCOL_PREFIX "openai-insecure-api-key."
const char *auth_ws_protocol_token(const char *value, size_t len, size_t *token_len,
                                   size_t *entry_start, size_t *entry_len);
/* AUTH_OK or AUTH_WRONG for that entry's token; AUTH_NOT_BEARER when there is none. */
int auth_check_ws_protocol(const auth_tokens_t *t, const char *value, size_t len);
/* The token part of a Bearer header after trimming (for redaction); NULL when not Bearer. */
const char *auth_bearer_token(const char *header, size_t len, size_t *token_len);

#endif
