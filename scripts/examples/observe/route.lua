-- Example: on_response as an observer of the row the proxy writes. Copy this file to
-- <scripts>/route.lua (or run with -scripts scripts/examples/observe). authorize and
-- pick_upstream stay the defaults; the default on_response (error notices) still runs.
--
-- The proxy writes one `records` row per exchange and counts successes and failures itself;
-- this script only changes what the row says, or drops it:
--   * a client that names itself in the `X-Client-Name` header gets " client=<name>" appended
--     to the row's user agent (read in authorize, carried to on_response in req.ctx);
--   * exchanges on a path listed in the config key `unrecorded_paths` (comma-separated, e.g.
--     "/v1/models") leave no row (`return false`); their counters still count;
--   * an answer slower than `slow_request_seconds` (default 30) is marked in the row's error
--     column when it has no error of its own.
--     openai-api-route -set unrecorded_paths=/v1/models
--     openai-api-route -set slow_request_seconds=10
local route = require "route"

local function listed(key, value)
    for entry in (route.config.get(key) or ""):gmatch("[^,]+") do
        if entry:gsub("^%s+", ""):gsub("%s+$", "") == value then
            return true
        end
    end
    return false
end

local function authorize(req)
    local name = req.headers["x-client-name"]
    if name and name:match("^[%w%._%-]+$") and #name <= 64 then
        req.ctx.client = name
    end
    return route.defaults.authorize(req)
end

local function on_response(req, res)
    route.defaults.on_response(req, res)
    if listed("unrecorded_paths", req.path) then
        return false
    end
    if req.ctx.client then
        res.record.user_agent = (req.headers["user-agent"] or "") .. " client=" .. req.ctx.client
    end
    local slow = tonumber(route.config.get("slow_request_seconds") or "") or 30
    if res.error == nil and res.elapsed > slow then
        res.record.error = ("slow: %.1f s"):format(res.elapsed)
    end
end

return { authorize = authorize, on_response = on_response }
