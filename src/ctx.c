/* ctx.c: the end of the per-loop recycling that hangs off route_ctx_t.
 *
 * Owns: freeing the free lists and caches of route_ctx_t (arena blocks, extractors, parsed
 * endpoint URLs, the scratch buffer) at exit.
 * Must not: free anything a request may still hold: it runs after the loop has ended. */
#include "route/ctx.h"

#include "route/upstream.h"

void route_ctx_release_caches(route_ctx_t *ctx) {
    upstream_url_cache_free(ctx->url_cache);
    ctx->url_cache = NULL;
    extract_pool_release(&ctx->extract_pool);
    arena_pool_release(&ctx->arena_pool);
    buf_free(&ctx->scratch);
}
