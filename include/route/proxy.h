/* proxy.h: one /v1 request's life: authorize, pick candidates, forward with failover,
 * stream the answer, extract, finish (on_response hook, record). */
#ifndef ROUTE_PROXY_H
#define ROUTE_PROXY_H

#include "route/http.h"

void proxy_handle(http_request_t *req);

#endif
