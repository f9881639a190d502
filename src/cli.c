/* cli.c: the command line with Go `flag` semantics (the Go program's flags must keep
 * working), its usage text, the listen-address split, and the one-shot commands -add, -set
 * and -list (and the dispatch to -check, check.c, and -export, export.c). It never exits the
 * process itself (main decides), and never starts the server.
 * The one-shots print keys and tokens in full on purpose: they are the operator's own view
 * of their own database; nothing here goes to the log. */
#include "route/cli.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route/config.h"
#include "route/store.h"
#include "route/util.h"

enum flag_kind { FLAG_STRING, FLAG_BOOL, FLAG_HELP };

/* Sorted by name, as Go's PrintDefaults lists them. */
static const struct flag {
    const char *name, *arg, *def, *usage;
    enum flag_kind kind;
    size_t off;
} flags[] = {
#define S(name, arg, def, field, usage)                                                            \
    { name, arg, def, usage, FLAG_STRING, offsetof(route_options_t, field) }
#define B(name, field, usage)                                                                      \
    { name, NULL, NULL, usage, FLAG_BOOL, offsetof(route_options_t, field) }
    B("add", add, "add an upstream from -sk and -endpoint, print it and exit"),
    S("addr", "string", ":8888", addr, "listen address: host:port, :port or [::1]:port"),
    S("ca-file", "string", NULL, ca_file,
      "CA certificates (PEM) for upstream TLS; the system bundle when not given"),
    B("check", check,
      "check the scripts, the database's config values and the TLS files, then exit: 0 and one "
      "line when all is well, else each problem and 1 (nothing is written)"),
    S("database", "string", "./db.sqlite", database,
      "SQLite database file, created with the schema if missing"),
    S("endpoint", "string", "https://api.openai.com/v1", endpoint, "upstream base URL for -add"),
    S("export", "file", NULL, export_path,
      "write the recorded chat exchanges as fine-tuning JSON Lines to file (- for stdout), then "
      "exit; see -since and -model"),
    {"h", NULL, NULL, "print this usage and exit (also -help)", FLAG_HELP, 0},
    {"help", NULL, NULL, NULL, FLAG_HELP, 0},
    B("list", list, "print the upstreams and the config, then exit"),
    S("log-format", "string", "text", log_format,
      "lines on stderr (access log and messages): text or json (one JSON object per line)"),
    S("model", "name", NULL, model, "-export only the records of this model"),
    B("noauth", noauth, "do not check the client's Authorization on /v1/* (admin stays protected)"),
    S("scripts", "string", "./scripts", scripts,
      "folder with route.lua; the built-in hooks where it is missing"),
    S("set", "key=value", NULL, set,
      "write a config key (e.g. policy=round_robin, authorization=tok) and exit"),
    S("since", "time", NULL, since,
      "-export only the records created at or after time (RFC 3339, or YYYY-MM-DD: midnight UTC)"),
    S("sk", "string", NULL, sk, "upstream API key for -add (sk-xxxxx)"),
    S("tls-cert", "string", NULL, tls_cert, "certificate file (PEM): serve HTTPS; needs -tls-key"),
    S("tls-key", "string", NULL, tls_key, "private key file (PEM) for -tls-cert"),
#undef S
#undef B
};
#define NFLAGS (sizeof flags / sizeof *flags)

void cli_usage(FILE *f, const char *argv0) {
    fprintf(f, "Usage of %s:\n", argv0);
    for (size_t i = 0; i < NFLAGS; i++) {
        const struct flag *fl = &flags[i];
        if (!fl->usage) continue;
        fprintf(f, "  -%s%s%s\n    \t%s", fl->name, fl->arg ? " " : "", fl->arg ? fl->arg : "",
                fl->usage);
        if (fl->def) fprintf(f, " (default \"%s\")", fl->def);
        fputc('\n', f);
    }
}

static int usage_error(FILE *err, const char *argv0, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int usage_error(FILE *err, const char *argv0, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(err, fmt, ap);
    va_end(ap);
    fputc('\n', err);
    cli_usage(err, argv0);
    return CLI_USAGE_ERROR;
}

/* strconv.ParseBool's accepted spellings. */
static int parse_bool(const char *s, int *v) {
    static const char *const truthy[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const falsy[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < 6; i++) {
        if (strcmp(s, truthy[i]) == 0) return *v = 1, 0;
        if (strcmp(s, falsy[i]) == 0) return *v = 0, 0;
    }
    return -1;
}

/* -check and -export are commands of their own; -since and -model only filter -export. */
static int check_oneshot_flags(const route_options_t *opts, FILE *err, const char *argv0) {
    int64_t ns;
    if (opts->check && (opts->add || opts->set || opts->list || opts->export_path))
        return usage_error(err, argv0,
                           "-check cannot be combined with -add, -set, -list or -export");
    if (opts->export_path && (opts->add || opts->set || opts->list))
        return usage_error(err, argv0, "-export cannot be combined with -add, -set or -list");
    if (!opts->export_path && (opts->since || opts->model))
        return usage_error(err, argv0, "-since and -model filter -export; -export is missing");
    if (opts->export_path && !*opts->export_path)
        return usage_error(err, argv0, "-export needs a file name (- for stdout)");
    if (opts->since && util_parse_db_time(opts->since, &ns) != 0)
        return usage_error(err, argv0,
                           "invalid value \"%s\" for flag -since: want RFC 3339 "
                           "(2024-05-01T12:00:00+08:00) or YYYY-MM-DD",
                           opts->since);
    return CLI_OK;
}

int cli_parse(int argc, char **argv, route_options_t *opts, FILE *out, FILE *err) {
    const char *argv0 = argc > 0 ? argv[0] : "openai-api-route";
    memset(opts, 0, sizeof *opts);
    for (size_t i = 0; i < NFLAGS; i++)
        if (flags[i].kind == FLAG_STRING)
            *(const char **)((char *)opts + flags[i].off) = flags[i].def;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *name = arg + 1;
        if (arg[0] != '-' || arg[1] == '\0') break;
        if (*name == '-' && *++name == '\0') break; /* "--" ends the flags */
        if (*name == '-' || *name == '=')
            return usage_error(err, argv0, "bad flag syntax: %s", arg);
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct flag *f = NULL;
        for (size_t k = 0; k < NFLAGS && !f; k++)
            if (strlen(flags[k].name) == len && strncmp(flags[k].name, name, len) == 0)
                f = &flags[k];
        if (!f)
            return usage_error(err, argv0, "flag provided but not defined: -%.*s", (int)len, name);
        if (f->kind == FLAG_HELP) {
            cli_usage(out, argv0);
            return CLI_HELP;
        }
        if (f->kind == FLAG_BOOL) {
            int v = 1;
            if (eq && parse_bool(eq + 1, &v))
                return usage_error(err, argv0, "invalid boolean value \"%s\" for -%s: parse error",
                                   eq + 1, f->name);
            *(int *)((char *)opts + f->off) = v;
            continue;
        }
        const char *value = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
        if (!value) return usage_error(err, argv0, "flag needs an argument: -%s", f->name);
        *(const char **)((char *)opts + f->off) = value;
    }
    if (strcmp(opts->log_format, "text") != 0 && strcmp(opts->log_format, "json") != 0)
        return usage_error(err, argv0, "invalid value \"%s\" for -log-format: text or json",
                           opts->log_format);
    if (!opts->tls_cert != !opts->tls_key) {
        fprintf(err, "-tls-cert and -tls-key must be given together\n");
        return CLI_USAGE_ERROR;
    }
    return check_oneshot_flags(opts, err, argv0);
}

int cli_split_addr(const char *addr, char *host, size_t host_cap, int *port) {
    const char *h = addr, *colon;
    size_t hlen;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':') return -1;
        h = addr + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        /* A second colon outside brackets is an IPv6 address without them: ambiguous. */
        if (!colon || memchr(addr, ':', (size_t)(colon - addr))) return -1;
        hlen = (size_t)(colon - addr);
    }
    if (hlen >= host_cap || memchr(h, '[', hlen) || memchr(h, ']', hlen)) return -1;
    const char *p = colon + 1;
    long v = 0;
    size_t nd = strspn(p, "0123456789");
    if (nd == 0 || nd > 5 || p[nd] != '\0') return -1;
    for (size_t i = 0; i < nd; i++)
        v = v * 10 + (p[i] - '0');
    if (v > 65535) return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)v;
    return 0;
}

/* ---- one-shot commands ---- */

enum { NCOLS = 6 }; /* of the -list table */

/* Left-aligned columns two spaces apart; cells holds nrows rows, header first. */
static void print_table(FILE *f, const char **cells, size_t nrows) {
    const size_t ncols = NCOLS;
    size_t width[NCOLS] = {0};
    for (size_t r = 0; r < nrows; r++)
        for (size_t c = 0; c < ncols; c++) {
            size_t w = strlen(cells[r * ncols + c]);
            if (w > width[c]) width[c] = w;
        }
    for (size_t r = 0; r < nrows; r++)
        for (size_t c = 0; c < ncols; c++)
            if (c + 1 < ncols)
                fprintf(f, "%-*s  ", (int)width[c], cells[r * ncols + c]);
            else
                fprintf(f, "%s\n", cells[r * ncols + c]);
}

static int list_upstreams(store_t *s, FILE *out, FILE *err) {
    store_upstream_list_t l;
    if (store_list_upstreams(s, &l) != STORE_OK) {
        fprintf(err, "cannot read the upstreams\n");
        return 1;
    }
    arena_t a;
    arena_init(&a);
    const char **cells = arena_alloc(&a, (l.n + 1) * NCOLS * sizeof *cells);
    int rc = cells ? 0 : 1;
    if (cells) {
        static const char *const header[NCOLS] = {"ID",      "SK",     "Endpoint",
                                                  "Success", "Failed", "Last Success Time"};
        memcpy(cells, header, sizeof header);
        for (size_t i = 0; i < l.n; i++) {
            const store_upstream_t *u = &l.items[i];
            const char **row = cells + (i + 1) * NCOLS;
            char when[64] = "never";
            if (u->has_last_success)
                util_format_db_time(when, sizeof when, u->last_call_success_time);
            row[0] = arena_printf(&a, "%lld", (long long)u->id);
            row[1] = u->sk;
            row[2] = u->endpoint;
            row[3] = arena_printf(&a, "%lld", (long long)u->success_count);
            row[4] = arena_printf(&a, "%lld", (long long)u->failed_count);
            row[5] = arena_strdup(&a, when);
            if (!row[0] || !row[3] || !row[4] || !row[5]) rc = 1;
        }
        if (!rc) print_table(out, cells, l.n + 1);
    }
    arena_free(&a);
    store_upstream_list_free(&l);
    return rc;
}

static void print_config(void *ud, const char *key, const char *value) {
    fprintf(ud, "%s=%s\n", key, value);
}

static int run_list(store_t *s, FILE *out, FILE *err) {
    if (list_upstreams(s, out, err)) return 1;
    fprintf(out, "\nConfig:\n");
    if (store_config_each(s, print_config, out) == STORE_OK) return 0;
    fprintf(err, "cannot read the config\n");
    return 1;
}

static int run_add(store_t *s, const route_options_t *opts, FILE *out, FILE *err) {
    int64_t id;
    switch (store_add_upstream(s, opts->sk, opts->endpoint, &id)) {
    case STORE_OK:
        fprintf(out, "added upstream %lld: sk=%s endpoint=%s\n", (long long)id, opts->sk,
                opts->endpoint);
        return 0;
    case STORE_EXISTS:
        fprintf(err, "an upstream with this sk and endpoint %s already exists\n", opts->endpoint);
        return 1;
    default:
        fprintf(err, "cannot add the upstream to %s\n", opts->database);
        return 1;
    }
}

static int run_set(store_t *s, const char *key, const char *value, FILE *out, FILE *err) {
    char why[256];
    if (config_validate(key, value, why, sizeof why) != 0) {
        fprintf(err, "-set: invalid value: %s\n", why);
        return 1;
    }
    if (store_config_set(s, key, value) != STORE_OK) {
        fprintf(err, "cannot write config key %s\n", key);
        return 1;
    }
    fprintf(out, "config set: %s=%s\n", key, value);
    return 0;
}

/* Each one asked for runs, in the order add, set, list (so -set k=v -list shows the result),
 * stopping at the first that fails. */
int cli_run_oneshot(const route_options_t *opts, FILE *out, FILE *err) {
    if (opts->check) return cli_run_check(opts, out, err);
    if (opts->export_path) return cli_run_export(opts, out, err);
    if (!opts->add && !opts->set && !opts->list) return -1;
    if (opts->add && (!opts->sk || !*opts->sk)) {
        fprintf(err, "-add needs -sk\n");
        return 1;
    }
    if (opts->add && (!opts->endpoint || !*opts->endpoint)) {
        fprintf(err, "-add needs a non-empty -endpoint\n");
        return 1;
    }
    const char *eq = opts->set ? strchr(opts->set, '=') : NULL;
    if (opts->set && (!eq || eq == opts->set)) {
        fprintf(err, "-set wants key=value, with a non-empty key\n");
        return 1;
    }
    char *key = opts->set ? strndup(opts->set, (size_t)(eq - opts->set)) : NULL;
    char *msg = NULL;
    store_t *s = opts->set && !key ? NULL : store_open(opts->database, &msg);
    if (!s) {
        fprintf(err, "cannot open database %s: %s\n", opts->database, msg ? msg : "out of memory");
        free(msg);
        free(key);
        return 1;
    }
    int rc = 0;
    if (opts->add) rc = run_add(s, opts, out, err);
    if (!rc && opts->set) rc = run_set(s, key, eq + 1, out, err);
    if (!rc && opts->list) rc = run_list(s, out, err);
    store_close(s);
    free(key);
    return rc;
}
