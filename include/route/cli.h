/* cli.h: the command line (Go `flag` syntax) and the one-shot commands -add, -list, -set,
 * -check and -export. */
#ifndef ROUTE_CLI_H
#define ROUTE_CLI_H

#include <stdio.h>

typedef struct route_options {
    const char *addr;     /* ":8888" */
    const char *database; /* "./db.sqlite" */
    const char *sk;       /* NULL when not given */
    const char *endpoint; /* "https://api.openai.com/v1" */
    const char *scripts;  /* "./scripts" */
    const char *set;      /* "key=value" or NULL */
    const char *ca_file;  /* NULL: system bundle */
    const char *tls_cert, *tls_key;
    const char *log_format;    /* "text" or "json": the access log's lines */
    const char *export_path;   /* -export FILE, "-" for stdout; NULL when not given */
    const char *since, *model; /* -export filters; NULL when not given */
    int add, list, noauth, check;
} route_options_t;

enum { CLI_OK = 0, CLI_HELP = 1, CLI_USAGE_ERROR = 2 };

/* Parses argv into opts (defaults first). CLI_HELP: usage printed to out, exit 0.
 * CLI_USAGE_ERROR: message + usage printed to err, exit 2. Never exits by itself. */
int cli_parse(int argc, char **argv, route_options_t *opts, FILE *out, FILE *err);
void cli_usage(FILE *f, const char *argv0);

/* Runs -add / -list / -set when asked. Returns -1 when none applies (start the server),
 * else the process exit status (0 ok, 1 error). */
int cli_run_oneshot(const route_options_t *opts, FILE *out, FILE *err);

/* -check (check.c): loads the scripts, reads the database read-only and validates every
 * config value, loads the TLS files; prints each problem to err (exit 1) or one OK line to
 * out (exit 0). Returns the exit status. */
int cli_run_check(const route_options_t *opts, FILE *out, FILE *err);
/* -export (export.c): the recorded chat exchanges as fine-tuning JSON Lines to -export's file
 * (or out for "-"), the tally on err. Returns the exit status. */
int cli_run_export(const route_options_t *opts, FILE *out, FILE *err);

/* Splits "host:port", ":port", "[::1]:port" into host (empty => all interfaces) and port.
 * Returns 0 on success. */
int cli_split_addr(const char *addr, char *host, size_t host_cap, int *port);

#endif
