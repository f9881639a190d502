-- route.lua: the default hooks, compiled into the binary. A scripts/route.lua of your own
-- returns a table with any of these three functions; the ones it leaves out fall back to
-- these. The C proxy does the networking and the accounting: hooks only decide (who may call,
-- which upstreams in which order) and observe. They must not block: there is no sleep, no
-- socket, no file I/O on the request path here (route.http_post is asynchronous).
--
--   authorize(req)                -> true | false, status, message
--   pick_upstream(req, upstreams) -> upstream | {upstream, ...} | nil, message
--   on_response(req, res)         -> nothing (keep the row) | false (no row for this request)
--
-- Records and counters are C's: every exchange that passed authorize gets its `records` row
-- and its counter updates whatever the hooks do (also when on_response raises). on_response
-- observes: it may add to the row, e.g. `res.record.error = "..."` or any other column
-- (ip, body, response, model, upstream_endpoint, user_agent, error, status, upstream_id,
-- prompt_tokens, completion_tokens, total_tokens, elapsed / response_time in seconds,
-- elapsed_ns / response_time_ns), or veto it: `return false`, or `res.record = false`.
-- route.record{...} writes an extra row (with the request's own id, req.id, it replaces C's
-- row instead); route.upstream_success(id) / route.upstream_failed(id) are extra signals on
-- top of C's counting, which the defaults do not send.
--
-- req is one object per request, the same in all three hooks; its fields are read on first
-- access: id, method, path, query, headers (lower-case names), client_ip, model, stream, body;
-- req.ctx is a table of your own that lasts from authorize to on_response. A req kept past
-- its request (say in route.shared) raises when read. Times are float seconds (res.elapsed,
-- res.ttfb, route.now()); res.elapsed_ns and res.ttfb_ns are integer nanoseconds. The tables in
-- `upstreams` are shared between requests: read them, return them, sort a copy of the list
-- (the list itself is yours); fields you add to one (timeout, connect_timeout, stream_timeout,
-- idle_timeout, in seconds) last for that hook call only.
local route = require "route"

-- The defaults are C functions (src/lua/default_hooks.c), the same values as
-- route.defaults.authorize / pick_upstream / on_response: a script may wrap them. When a hook
-- of a request is one of them, the proxy calls it without entering Lua at all; a hook your
-- script overrides runs in Lua, the others stay in C. What each does:
local defaults = route.defaults

local M = {}

-- authorize(req): true when -noauth is set (or route.config.get("noauth") == "true"); else the
-- one Bearer rule (the admin API uses it too, route.check_bearer(req.headers["authorization"])):
-- "Bearer" (case-sensitive), then the token trimmed of white space, compared in constant time
-- with each entry of `authorization`. A refusal is `false, 403, message`, the message being
-- "authorization header should start with 'Bearer'" or "wrong authorization header".
M.authorize = defaults.authorize

-- pick_upstream(req, upstreams): the whole ordered list is returned, and the proxy fails over
-- along it. The config key `policy` (missing or "" is "main") chooses the order:
--   main                   fewest failures first, then most successes, then lowest id
--   random                 a shuffle (Fisher-Yates, from the loop's own PRNG)
--   random_available       a shuffle of those with failed_count == 0
--   round_robin            oldest last_call_success_time first, never-used ones before all
--                          others, then lowest id (the Go ordering)
--   round_robin_available  the same, of those with failed_count == 0
-- Errors (nil, message), checked in this order:
--   "unknown load balance policy '<name>'"
--   "no upstream available: add one with -add or POST /admin/upstreams"  (an empty list)
--   "no upstream available: every upstream has failures (policy '<name>')"
-- Called from Lua, it orders the list it is given (yours: a subset, or tables of your own; a
-- missing count reads as 0, a missing last_call_success_time as never) and returns a new list
-- of the same tables.
M.pick_upstream = defaults.pick_upstream

-- on_response(req, res): C has written the row and counted; the default only sends the error
-- notices. When res.error is set and the client did not go away (res.client_aborted), it posts
-- "openai-api-route: request <req.id> <req.path> to <res.upstream.endpoint or (no upstream)>
-- failed, status <res.status>: <res.error>" to FEISHU_WEBHOOK ({msg_type = "text", content =
-- {text = ...}}) and MATRIX_API ({msgtype = "m.text", body = ...}), whichever environment
-- variable is set, with route.http_post (fire and forget). The text names the endpoint,
-- status and error, never a key: the C side builds res.error from endpoints only.
M.on_response = defaults.on_response

return M
