/* fuzz_flags.c: libFuzzer target for the Go-flag command line (cli.c). The input is an
 * argument list, NUL-separated (argv[0] added in front). Whatever it holds:
 *   - cli_parse returns CLI_OK, CLI_HELP or CLI_USAGE_ERROR, writes usage only to the stream
 *     it names (help to out, errors to err), and every string option it sets is its default,
 *     NULL where it has none, or one of the arguments (never a pointer into the middle of one
 *     except after "name="); -tls-cert and -tls-key are both set or neither on CLI_OK;
 *   - parsing twice gives the same options (no hidden state);
 *   - cli_split_addr of every argument and of the parsed -addr either fails or gives a port
 *     in 0..65535 and a host that, put back together, splits to the same again. */
#include "route/cli.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ARGS 64

/* A string option is a default (static text), NULL, or lies inside one argument. */
static void check_string(const char *v, const char *dflt, char **argv, int argc) {
    if (!v || v == dflt) return;
    for (int i = 1; i < argc; i++) {
        size_t n = strlen(argv[i]);
        if (v >= argv[i] && v <= argv[i] + n) {
            /* Inside an argument: the whole of it, or what follows its first '='. */
            const char *eq = strchr(argv[i], '=');
            if (v != argv[i] && (!eq || v != eq + 1)) abort();
            return;
        }
    }
    abort();
}

static void check_addr(const char *addr) {
    char host[256], again[256], text[300];
    int port = -1, port2 = -1;
    if (cli_split_addr(addr, host, sizeof host, &port) != 0) return;
    if (port < 0 || port > 65535) abort();
    if (strchr(host, '[') || strchr(host, ']')) abort();
    if (strchr(host, ':'))
        snprintf(text, sizeof text, "[%s]:%d", host, port);
    else
        snprintf(text, sizeof text, "%s:%d", host, port);
    if (cli_split_addr(text, again, sizeof again, &port2) != 0) abort();
    if (port2 != port || strcmp(again, host) != 0) abort();
}

static int parse(int argc, char **argv, route_options_t *o, size_t *out_len, size_t *err_len) {
    char *out_text = NULL, *err_text = NULL;
    FILE *out = open_memstream(&out_text, out_len), *err = open_memstream(&err_text, err_len);
    if (!out || !err) abort();
    int rc = cli_parse(argc, argv, o, out, err);
    fclose(out);
    fclose(err);
    free(out_text);
    free(err_text);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    /* The arguments, each its own allocation so ASan sees a read past one. */
    char *argv[MAX_ARGS + 1] = {0};
    int argc = 0;
    argv[argc++] = strdup("openai-api-route");
    for (size_t at = 0; at <= size && argc < MAX_ARGS;) {
        const uint8_t *nul = memchr(data + at, '\0', size - at);
        size_t n = nul ? (size_t)(nul - (data + at)) : size - at;
        char *a = malloc(n + 1);
        if (!a) abort();
        memcpy(a, data + at, n);
        a[n] = '\0';
        argv[argc++] = a;
        at += n + 1;
    }

    route_options_t a, b;
    size_t out_len = 0, err_len = 0, out2 = 0, err2 = 0;
    int rc = parse(argc, argv, &a, &out_len, &err_len);
    if (rc != CLI_OK && rc != CLI_HELP && rc != CLI_USAGE_ERROR) abort();
    if (rc == CLI_HELP && (out_len == 0 || err_len != 0)) abort();
    if (rc == CLI_USAGE_ERROR && (err_len == 0 || out_len != 0)) abort();
    if (rc == CLI_OK && (out_len != 0 || err_len != 0)) abort();
    if (parse(argc, argv, &b, &out2, &err2) != rc || out2 != out_len || err2 != err_len) abort();

    if (rc == CLI_OK) {
        if (memcmp(&a, &b, sizeof a) != 0) abort();
        if (!a.tls_cert != !a.tls_key) abort();
        if ((a.add | a.list | a.noauth) & ~1) abort();
        route_options_t d;
        char *none[] = {argv[0], NULL};
        if (parse(1, none, &d, &out2, &err2) != CLI_OK) abort();
        check_string(a.addr, d.addr, argv, argc);
        check_string(a.database, d.database, argv, argc);
        check_string(a.endpoint, d.endpoint, argv, argc);
        check_string(a.scripts, d.scripts, argv, argc);
        check_string(a.sk, NULL, argv, argc);
        check_string(a.set, NULL, argv, argc);
        check_string(a.ca_file, NULL, argv, argc);
        check_string(a.tls_cert, NULL, argv, argc);
        check_string(a.tls_key, NULL, argv, argc);
        if (!a.addr || !a.database || !a.endpoint || !a.scripts) abort();
        check_addr(a.addr);
    }
    for (int i = 1; i < argc; i++)
        check_addr(argv[i]);
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    return 0;
}
