/* admin.h: the /admin API and /metrics. */
#ifndef ROUTE_ADMIN_H
#define ROUTE_ADMIN_H

#include "route/http.h"

void admin_handle(http_request_t *req);
void metrics_handle(http_request_t *req);

#endif
