/* bench_hooks.c: the per-request cost of the Lua hooks with the embedded default scripts:
 * authorize, pick_upstream and on_response (with the record and the counters, as proxy_finish
 * does them) on a fake request shaped like an SDK's chat call (11 headers, a 190-byte body),
 * against a temporary database with two upstreams. It reports microseconds per request, the
 * best of several rounds. The store's writer thread runs as in the server (it takes the queued
 * rows), so run it on an idle machine.
 *
 * Owns: nothing of the product; it only drives the hooks' public interface (hooks.h,
 * records.h) as proxy.c does. Must not: be run from ctest (its numbers depend on the machine).
 *
 * Built with the tree (tests/CMakeLists.txt, never run by ctest): after a normal cmake build,
 *   cmake --build build --target bench_hooks && build/tests/bench_hooks
 * -DHOOKS_OLD_API builds it against the hooks before issue 8 (on_response recorded in Lua).
 * BENCH_HOOKS_ONLY=1 in the environment leaves the row and the counters out (new API only);
 * BENCH_HOOKS_SCRIPTS=<dir> loads <dir>/route.lua over the defaults (the Lua path). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "route/cli.h"
#include "route/config.h"
#include "route/ctx.h"
#include "route/hooks.h"
#include "route/http.h"
/* The fake request is built without a connection: it needs the HTTP core's struct. */
#include "../../src/http_internal.h"
#include "route/store.h"
#include "route/util.h"
#ifndef HOOKS_OLD_API
#include "route/records.h"
#endif

#define ROUNDS     5
#define PER_ROUND  20000
#define MAX_HEADER 16

static const char body[] =
    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
    "\"Say hello in one short sentence, please.\"}],\"temperature\":0.2,"
    "\"max_tokens\":64,\"stream\":false,\"user\":\"bench-user-0001\"}";

int main(void) {
    char dir[] = "/tmp/bench_hooks.XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char db[256];
    snprintf(db, sizeof db, "%s/db.sqlite", dir);
    char *err = NULL;
    route_options_t opts;
    memset(&opts, 0, sizeof opts);
    route_ctx_t ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.opts = &opts;
    ctx.store = store_open(db, &err);
    if (!ctx.store) {
        fprintf(stderr, "store_open: %s\n", err);
        return 1;
    }
    ctx.config = config_state_new();
    int64_t id;
    store_add_upstream(ctx.store, "sk-bench-aaaa", "http://127.0.0.1:9/v1", &id);
    store_add_upstream(ctx.store, "sk-bench-bbbb", "http://127.0.0.1:10/v1", &id);
    store_config_set(ctx.store, "authorization", "tok-bench-1,tok-bench-2");
    /* No loop runs here: install what was just written (the poller would in 100 ms). */
    store_loop_apply(ctx.store, store_snapshot_read(ctx.store));
    /* BENCH_HOOKS_SCRIPTS=<dir>: <dir>/route.lua over the defaults (the Lua path). */
    const char *scripts = getenv("BENCH_HOOKS_SCRIPTS");
    hooks_t *h = hooks_new(&ctx, scripts && *scripts ? scripts : dir, &err);
    if (!h) {
        fprintf(stderr, "hooks_new: %s\n", err);
        return 1;
    }

    route_header_t headers[MAX_HEADER] = {
        {"host", 4, "127.0.0.1:8888", 14},
        {"user-agent", 10, "OpenAI/Python 1.51.0", 20},
        {"accept", 6, "application/json", 16},
        {"accept-encoding", 15, "gzip, deflate", 13},
        {"content-type", 12, "application/json", 16},
        {"authorization", 13, "Bearer tok-bench-2", 18},
        {"x-stainless-lang", 16, "python", 6},
        {"x-stainless-package-version", 27, "1.51.0", 6},
        {"x-stainless-os", 14, "Linux", 5},
        {"x-stainless-runtime", 19, "CPython", 7},
        {"content-length", 14, "190", 3},
    };
    http_request_t http;
    memset(&http, 0, sizeof http);
    http.ctx = &ctx;
    http.method_name = "POST";
    http.path = "/v1/chat/completions";
    snprintf(http.client_ip, sizeof http.client_ip, "127.0.0.1");
    http.headers = headers;
    http.n_headers = 11;
    buf_appends(&http.body, body);

    route_attempt_t attempt = {1, "http://127.0.0.1:9/v1", 200, NULL, 0, 0, 0};
    route_res_t res = {
        .status = 200,
        .upstream_id = 1,
        .upstream_endpoint = "http://127.0.0.1:9/v1",
        .model = "gpt-4o-mini-2024-07-18",
        .content = "Hello there, nice to meet you!",
        .content_len = 30,
        .has_usage = 1,
        .prompt_tokens = 14,
        .completion_tokens = 9,
        .total_tokens = 23,
        .elapsed_ns = 1234567,
        .ttfb_ns = 1000000,
        .attempts = &attempt,
        .n_attempts = 1,
    };

    /* BENCH_HOOKS_ONLY=1: the three hook calls without building and queueing the row and the
     * counter bumps (the store's share), to see the Lua side alone. */
    int hooks_only = getenv("BENCH_HOOKS_ONLY") != NULL;
    double best = 1e30, best_phase[4] = {0, 0, 0, 0};
    long failures = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int64_t t0 = util_now_mono_ns();
        int64_t phase[4] = {0, 0, 0, 0};
        for (int i = 0; i < PER_ROUND; i++) {
            arena_init(&http.arena);
            route_req_t req;
            memset(&req, 0, sizeof req);
            req.http = &http;
            util_uuid4(req.id);
            req.model = "gpt-4o-mini";
            int status = 0;
            const char *message = NULL;
            int64_t a0 = util_now_mono_ns();
            if (hooks_authorize(h, &req, &status, &message) != 1) failures++;
            int64_t a1 = util_now_mono_ns();
            route_candidate_t *cands = NULL;
            size_t n = 0;
            if (hooks_pick_upstream(h, &req, &cands, &n, &message) != 0 || n != 2) failures++;
            int64_t a2 = util_now_mono_ns();
            phase[0] += a1 - a0;
            phase[1] += a2 - a1;
#ifdef HOOKS_OLD_API
            (void)hooks_only;
            hooks_on_response(h, &req, &res);
#else
            store_record_t *rec = NULL;
            if (!hooks_only) {
                records_count(ctx.store, &res);
                rec = records_build(&req, &res, 1);
            }
            hooks_on_response(h, &req, &res, &rec);
            if (rec) store_loop_record(ctx.store, rec);
#endif
            int64_t a3 = util_now_mono_ns();
            phase[2] += a3 - a2;
            hooks_release(h, &req);
            phase[3] += util_now_mono_ns() - a3;
            arena_free(&http.arena);
        }
        double us = (double)(util_now_mono_ns() - t0) / 1e3 / PER_ROUND;
        if (us < best) {
            best = us;
            for (int k = 0; k < 4; k++)
                best_phase[k] = (double)phase[k] / 1e3 / PER_ROUND;
        }
        /* Let the writer drain between rounds so a round measures the hooks, not a backlog. */
        usleep(200000);
    }
    printf("hooks per request (authorize + pick_upstream + on_response, %s%s%s): "
           "%.2f us (best of %d rounds of %d)%s\n",
           scripts && *scripts ? "route.lua of " : "default hooks",
           scripts && *scripts ? scripts : "",
           hooks_only ? ", no record" : ", with record and counters", best, ROUNDS, PER_ROUND,
           failures ? " FAILURES" : "");
    printf("  of which authorize %.2f us, pick_upstream %.2f us, on_response%s %.2f us, "
           "release %.2f us;\n  the rest is the loop's own (a uuid from getrandom, the arena, "
           "clock reads): %.2f us\n",
           best_phase[0], best_phase[1], hooks_only ? "" : " + record + counters", best_phase[2],
           best_phase[3], best - best_phase[0] - best_phase[1] - best_phase[2] - best_phase[3]);
    hooks_free(h);
    store_close(ctx.store);
    config_state_free(ctx.config);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    return failures ? 1 : 0;
}
