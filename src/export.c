/* export.c: -export FILE (or -): the recorded chat exchanges as JSON Lines in the OpenAI chat
 * fine-tuning format, one {"messages": [...the request's messages..., {"role": "assistant",
 * "content": <recorded text>}]} per line, oldest first, filtered by -since and -model.
 *
 * The rows stream through one statement (store_each_record): memory stays at one row whatever
 * the table holds. A row is exported only when it is a whole chat exchange that succeeded;
 * the others are skipped and counted by reason on stderr:
 *   not a chat exchange  the body is not a JSON object with a non-empty `messages` array (the
 *                        rows do not keep the path: completions, embeddings, audio, the
 *                        Responses API all lack it)
 *   failed               `error` set, or a status outside 2xx (0, a row the Go program wrote
 *                        without one, counts as unknown, not as failed)
 *   no response text     nothing was extracted (a tool call, an empty answer)
 *   truncated            the text reached the extraction cap (1 MiB): not the whole answer
 *   invalid text         the text is not valid UTF-8 (cut inside a character)
 *
 * Owns: the selection rules and the line format. Must not: write records or config (store_open
 * only brings an older file's schema up to date, as a start would: the Go program's file lacks
 * the columns read here), or keep more than the current row. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "route/cli.h"
#include "route/extract.h"
#include "route/store.h"
#include "route/util.h"

enum { SKIP_NOT_CHAT, SKIP_FAILED, SKIP_NO_TEXT, SKIP_TRUNCATED, SKIP_INVALID, N_SKIPS };

static const char *const skip_names[N_SKIPS] = {
    "not a chat exchange", "failed", "no response text", "truncated", "invalid text",
};

typedef struct exporter {
    FILE *f;
    long long exported, skipped[N_SKIPS];
    int write_errno; /* nonzero: writing failed, stop */
} exporter_t;

/* Which skip applies to r, or -1 when it is exported; *messages is the body's array then
 * (owned by *body). */
static int classify(const store_record_t *r, json_t **body, json_t **messages) {
    *body = r->body ? json_loadb(r->body, r->body_len, JSON_ALLOW_NUL, NULL) : NULL;
    *messages = json_is_object(*body) ? json_object_get(*body, "messages") : NULL;
    if (!json_is_array(*messages) || json_array_size(*messages) == 0) return SKIP_NOT_CHAT;
    if (r->error || (r->status && (r->status < 200 || r->status > 299))) return SKIP_FAILED;
    if (!r->response || r->response_len == 0) return SKIP_NO_TEXT;
    if (r->response_len >= EXTRACT_CONTENT_CAP) return SKIP_TRUNCATED;
    return -1;
}

static int export_row(void *ud, const store_record_t *r) {
    exporter_t *x = ud;
    json_t *body, *messages, *line = NULL;
    int skip = classify(r, &body, &messages);
    if (skip < 0) {
        /* NULL also when the text is not UTF-8 (jansson checks): out of memory is not told
         * apart, and would be the least of the process's troubles. */
        json_t *reply =
            json_pack("{s:s,s:s%}", "role", "assistant", "content", r->response, r->response_len);
        if (reply && json_array_append_new(messages, reply) == 0)
            line = json_pack("{s:O}", "messages", messages);
        if (!line) skip = SKIP_INVALID;
    }
    if (line) {
        char *text = json_dumps(line, JSON_COMPACT);
        if (!text || fputs(text, x->f) == EOF || fputc('\n', x->f) == EOF)
            x->write_errno = text ? (errno ? errno : EIO) : ENOMEM;
        else
            x->exported++;
        free(text);
        json_decref(line);
    } else {
        x->skipped[skip]++;
    }
    json_decref(body);
    return x->write_errno != 0;
}

static void report(const exporter_t *x, FILE *err) {
    long long skipped = 0;
    for (int i = 0; i < N_SKIPS; i++)
        skipped += x->skipped[i];
    fprintf(err, "exported %lld, skipped %lld", x->exported, skipped);
    const char *sep = " (";
    for (int i = 0; i < N_SKIPS; i++)
        if (x->skipped[i]) {
            fprintf(err, "%s%lld %s", sep, x->skipped[i], skip_names[i]);
            sep = ", ";
        }
    fprintf(err, "%s\n", skipped ? ")" : "");
}

int cli_run_export(const route_options_t *opts, FILE *out, FILE *err) {
    struct stat st;
    if (stat(opts->database, &st) != 0) {
        fprintf(err, "-export: no database at %s\n", opts->database);
        return 1;
    }
    store_record_filter_t filter = {.model = opts->model};
    if (opts->since) {
        filter.has_since = 1;
        if (util_parse_db_time(opts->since, &filter.since_ns) != 0) {
            fprintf(err, "-since %s: not a time (RFC 3339 or YYYY-MM-DD)\n", opts->since);
            return 1;
        }
    }
    char *msg = NULL;
    store_t *s = store_open(opts->database, &msg);
    if (!s) {
        fprintf(err, "cannot open database %s: %s\n", opts->database, msg ? msg : "out of memory");
        free(msg);
        return 1;
    }
    int to_stdout = strcmp(opts->export_path, "-") == 0;
    exporter_t x = {.f = to_stdout ? out : fopen(opts->export_path, "w")};
    int rc = 1;
    if (!x.f) {
        fprintf(err, "-export: cannot write %s: %s\n", opts->export_path, strerror(errno));
    } else {
        errno = 0;
        int read_rc = store_each_record(s, &filter, export_row, &x);
        if (!x.write_errno && fflush(x.f) != 0) x.write_errno = errno ? errno : EIO;
        if (!to_stdout && fclose(x.f) != 0 && !x.write_errno) x.write_errno = errno ? errno : EIO;
        if (x.write_errno)
            fprintf(err, "-export: writing %s failed: %s\n",
                    to_stdout ? "stdout" : opts->export_path, strerror(x.write_errno));
        else if (read_rc != STORE_OK)
            fprintf(err, "-export: reading the records of %s failed\n", opts->database);
        else
            rc = 0;
        report(&x, err);
    }
    store_close(s);
    return rc;
}
