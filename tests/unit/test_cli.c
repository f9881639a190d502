/* test_cli.c: Go `flag` parsing in every syntax and its errors, the usage text, the listen
 * address split, and the one-shot commands against a temporary database. */
#include "route/cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

typedef struct {
    FILE *out, *err;
    char *out_text, *err_text;
    size_t out_len, err_len;
} capture_t;

static void capture_open(capture_t *c) {
    c->out = open_memstream(&c->out_text, &c->out_len);
    c->err = open_memstream(&c->err_text, &c->err_len);
}

static void capture_close(capture_t *c) {
    fclose(c->out);
    fclose(c->err);
}

static void capture_free(capture_t *c) {
    free(c->out_text);
    free(c->err_text);
}

/* Parses a NULL-terminated argument list; the program name is added in front. */
static int parse(route_options_t *o, capture_t *c, const char *const *args) {
    char *argv[32] = {"openai-api-route"};
    int argc = 1;
    while (*args)
        argv[argc++] = (char *)*args++;
    capture_open(c);
    int rc = cli_parse(argc, argv, o, c->out, c->err);
    capture_close(c);
    return rc;
}

#define PARSE(o, c, ...) parse(o, c, (const char *const[]){__VA_ARGS__, NULL})

static int streq(const char *a, const char *b) {
    return a && b && strcmp(a, b) == 0;
}

static void test_defaults(void) {
    route_options_t o;
    capture_t c;
    CHECK(parse(&o, &c, (const char *const[]){NULL}) == CLI_OK);
    CHECK(streq(o.addr, ":8888") && streq(o.database, "./db.sqlite"));
    CHECK(streq(o.endpoint, "https://api.openai.com/v1") && streq(o.scripts, "./scripts"));
    CHECK(!o.sk && !o.set && !o.ca_file && !o.tls_cert && !o.tls_key);
    CHECK(!o.add && !o.list && !o.noauth);
    CHECK(c.out_len == 0 && c.err_len == 0);
    capture_free(&c);
}

static void test_syntaxes(void) {
    route_options_t o;
    capture_t c;
    CHECK(PARSE(&o, &c, "-addr", ":1", "-database=x.db", "--sk", "sk-1", "--endpoint=http://e",
                "-add", "--noauth", "-list=true", "-scripts", "s", "-set=k=v", "-ca-file", "ca",
                "-tls-cert=c", "-tls-key", "k") == CLI_OK);
    CHECK(streq(o.addr, ":1") && streq(o.database, "x.db") && streq(o.sk, "sk-1"));
    CHECK(streq(o.endpoint, "http://e") && streq(o.scripts, "s") && streq(o.set, "k=v"));
    CHECK(streq(o.ca_file, "ca") && streq(o.tls_cert, "c") && streq(o.tls_key, "k"));
    CHECK(o.add && o.noauth && o.list);
    capture_free(&c);

    /* Booleans take only the "=" form; later flags win. */
    CHECK(PARSE(&o, &c, "-noauth", "-noauth=false", "-add=1", "-list=F", "-sk", "a", "-sk=b") ==
          CLI_OK);
    CHECK(!o.noauth && o.add && !o.list && streq(o.sk, "b"));
    capture_free(&c);

    /* A value flag takes the next argument whatever it looks like. */
    CHECK(PARSE(&o, &c, "-sk", "-list") == CLI_OK);
    CHECK(streq(o.sk, "-list") && !o.list);
    capture_free(&c);

    CHECK(PARSE(&o, &c, "-sk=") == CLI_OK && streq(o.sk, ""));
    capture_free(&c);

    /* Parsing stops at the first non-flag, at "-" and after "--". */
    CHECK(PARSE(&o, &c, "-add", "true", "-list") == CLI_OK && o.add && !o.list);
    capture_free(&c);
    CHECK(PARSE(&o, &c, "-add", "--", "-list") == CLI_OK && o.add && !o.list);
    capture_free(&c);
    CHECK(PARSE(&o, &c, "-", "-list") == CLI_OK && !o.list);
    capture_free(&c);
}

static void test_errors(void) {
    route_options_t o;
    capture_t c;
    CHECK(PARSE(&o, &c, "-x") == CLI_USAGE_ERROR);
    CHECK(strstr(c.err_text, "flag provided but not defined: -x\n") &&
          strstr(c.err_text, "Usage of openai-api-route:"));
    capture_free(&c);

    CHECK(PARSE(&o, &c, "--bogus=1") == CLI_USAGE_ERROR);
    CHECK(strstr(c.err_text, "flag provided but not defined: -bogus\n"));
    capture_free(&c);

    CHECK(PARSE(&o, &c, "-add", "-sk") == CLI_USAGE_ERROR);
    CHECK(strstr(c.err_text, "flag needs an argument: -sk\n"));
    capture_free(&c);

    CHECK(PARSE(&o, &c, "-noauth=maybe") == CLI_USAGE_ERROR);
    CHECK(strstr(c.err_text, "invalid boolean value \"maybe\" for -noauth"));
    capture_free(&c);

    CHECK(PARSE(&o, &c, "---x") == CLI_USAGE_ERROR && strstr(c.err_text, "bad flag syntax"));
    capture_free(&c);
    CHECK(PARSE(&o, &c, "-=x") == CLI_USAGE_ERROR && strstr(c.err_text, "bad flag syntax"));
    capture_free(&c);

    CHECK(PARSE(&o, &c, "-tls-cert", "c.pem") == CLI_USAGE_ERROR);
    CHECK(strstr(c.err_text, "-tls-key"));
    capture_free(&c);
    CHECK(PARSE(&o, &c, "-tls-key", "k.pem") == CLI_USAGE_ERROR);
    capture_free(&c);
}

static void test_help(void) {
    static const char *const names[] = {"-addr string",
                                        "-database string",
                                        "-add\n",
                                        "-sk string",
                                        "-endpoint string",
                                        "-list\n",
                                        "-noauth\n",
                                        "-scripts string",
                                        "-set key=value",
                                        "-ca-file",
                                        "-tls-cert",
                                        "-tls-key",
                                        "-h",
                                        "-help"};
    const char *forms[] = {"-h", "-help", "--help", "--h"};
    for (size_t f = 0; f < 4; f++) {
        route_options_t o;
        capture_t c;
        CHECK(PARSE(&o, &c, forms[f]) == CLI_HELP);
        CHECK(c.err_len == 0 && strstr(c.out_text, "Usage of openai-api-route:\n"));
        for (size_t i = 0; i < sizeof names / sizeof *names; i++)
            CHECK(strstr(c.out_text, names[i]));
        CHECK(strstr(c.out_text, "  -addr string\n    \tlisten address"));
        CHECK(strstr(c.out_text, "(default \":8888\")\n"));
        CHECK(strstr(c.out_text, "(default \"https://api.openai.com/v1\")\n"));
        capture_free(&c);
    }
}

static int splits(const char *addr, const char *host, int port) {
    char h[64];
    int p = -1;
    return cli_split_addr(addr, h, sizeof h, &p) == 0 && strcmp(h, host) == 0 && p == port;
}

static int bad_addr(const char *addr) {
    char h[16];
    int p;
    return cli_split_addr(addr, h, sizeof h, &p) != 0;
}

static void test_split_addr(void) {
    CHECK(splits(":8888", "", 8888));
    CHECK(splits("0.0.0.0:8080", "0.0.0.0", 8080));
    CHECK(splits("localhost:80", "localhost", 80));
    CHECK(splits("[::1]:8888", "::1", 8888));
    CHECK(splits("[::]:0", "::", 0));
    CHECK(splits(":65535", "", 65535));
    CHECK(bad_addr("8888"));
    CHECK(bad_addr(":"));
    CHECK(bad_addr(":65536"));
    CHECK(bad_addr(":-1"));
    CHECK(bad_addr(":80x"));
    CHECK(bad_addr(":123456"));
    CHECK(bad_addr("::1:80"));
    CHECK(bad_addr("[::1]8888"));
    CHECK(bad_addr("[::1:8888"));
    CHECK(bad_addr("averyveryverylonghostname:80"));
}

static int oneshot(capture_t *c, const char *db, const char *const *args) {
    route_options_t o;
    char *argv[32] = {"openai-api-route", "-database", (char *)db};
    int argc = 3;
    while (*args)
        argv[argc++] = (char *)*args++;
    capture_open(c);
    int rc = cli_parse(argc, argv, &o, c->out, c->err);
    if (rc == CLI_OK) rc = cli_run_oneshot(&o, c->out, c->err);
    capture_close(c);
    return rc;
}

#define ONESHOT(c, db, ...) oneshot(c, db, (const char *const[]){__VA_ARGS__, NULL})

static void test_oneshot(void) {
    char dir[] = "/tmp/route-test-cli-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char db[256];
    snprintf(db, sizeof db, "%s/db.sqlite", dir);
    capture_t c;

    CHECK(ONESHOT(&c, db, "-noauth") == -1);
    capture_free(&c);

    CHECK(ONESHOT(&c, db, "-add") == 1 && strstr(c.err_text, "-sk"));
    capture_free(&c);
    CHECK(ONESHOT(&c, db, "-set", "novalue") == 1 && strstr(c.err_text, "key=value"));
    capture_free(&c);
    CHECK(ONESHOT(&c, db, "-set", "=v") == 1);
    capture_free(&c);
    CHECK(access(db, F_OK) != 0); /* refused before touching the database */

    CHECK(ONESHOT(&c, db, "-add", "-sk", "sk-one") == 0);
    CHECK(strstr(c.out_text, "added upstream 1") && strstr(c.out_text, "sk-one") &&
          strstr(c.out_text, "https://api.openai.com/v1"));
    capture_free(&c);
    CHECK(ONESHOT(&c, db, "-add", "-sk", "sk-one") == 1 && strstr(c.err_text, "already exists"));
    capture_free(&c);
    CHECK(ONESHOT(&c, db, "-add", "-sk=sk-two", "-endpoint=http://127.0.0.1:9/v1") == 0);
    CHECK(strstr(c.out_text, "added upstream 2"));
    capture_free(&c);

    CHECK(ONESHOT(&c, db, "-set", "policy=round_robin") == 0 &&
          strstr(c.out_text, "policy=round_robin"));
    capture_free(&c);
    CHECK(ONESHOT(&c, db, "-set", "authorization=a=b,c") == 0);
    capture_free(&c);

    CHECK(ONESHOT(&c, db, "-list") == 0);
    const char *t = c.out_text;
    CHECK(strstr(t, "ID  SK      Endpoint                   Success  Failed  Last Success Time\n"));
    CHECK(strstr(t, "1   sk-one  https://api.openai.com/v1  0        0       never\n"));
    CHECK(strstr(t, "2   sk-two  http://127.0.0.1:9/v1"));
    CHECK(strstr(t, "\nConfig:\nauthorization=a=b,c\npolicy=round_robin\n"));
    capture_free(&c);

    /* All asked for run: add, then set, then list. */
    CHECK(ONESHOT(&c, db, "-list", "-set", "policy=main", "-add", "-sk", "sk-3") == 0);
    CHECK(strstr(c.out_text, "added upstream 3") && strstr(c.out_text, "sk-3 ") &&
          strstr(c.out_text, "policy=main\n"));
    capture_free(&c);

    CHECK(ONESHOT(&c, "/nonexistent-dir/db.sqlite", "-list") == 1);
    CHECK(strstr(c.err_text, "cannot open database /nonexistent-dir/db.sqlite"));
    capture_free(&c);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

int main(void) {
    test_defaults();
    test_syntaxes();
    test_errors();
    test_help();
    test_split_addr();
    test_oneshot();
    return TEST_DONE();
}
