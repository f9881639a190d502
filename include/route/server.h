/* server.h: the listening socket and client connections of one event loop. */
#ifndef ROUTE_SERVER_H
#define ROUTE_SERVER_H

#include "route/ctx.h"
#include "route/http.h"
#include "route/router.h"

/* Binds and listens on opts->addr; complete requests go to router (which must outlive the
 * server). Returns 0, or -1 with a message in err. */
int server_start(route_ctx_t *ctx, const router_t *router, char *err, size_t err_cap);
/* Stops accepting; idle keep-alive connections close, active ones finish. */
void server_stop_accepting(route_ctx_t *ctx);
/* Number of requests being handled now. */
size_t server_active_requests(route_ctx_t *ctx);
size_t server_open_connections(route_ctx_t *ctx);
/* Closes everything (after the grace period). */
void server_close_all(route_ctx_t *ctx);
void server_free(route_ctx_t *ctx);

#endif
