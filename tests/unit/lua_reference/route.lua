-- lua_reference/route.lua: the default hooks as they were written in Lua before they moved to
-- C (src/lua/default_hooks.c; scripts/route.lua documents the contract). Not shipped:
-- tests/unit/test_hooks.c loads it as an operator's script and checks that the C policies
-- order the upstreams exactly as this does, and tests/bench/bench_hooks.c measures the Lua
-- path with it (BENCH_HOOKS_SCRIPTS=tests/unit/lua_reference).
local route = require "route"

local M = {}

-- The one Bearer rule (the admin API uses it too): "Bearer" (case-sensitive), then the token
-- trimmed of white space, compared in constant time with each entry of `authorization`.
function M.authorize(req)
    if route.config.get("noauth") == "true" then
        return true
    end
    local ok, message = route.check_bearer(req.headers["authorization"])
    if ok then
        return true
    end
    return false, 403, message
end

local function copy(list, keep)
    local out = {}
    for _, u in ipairs(list) do
        if keep == nil or keep(u) then
            out[#out + 1] = u
        end
    end
    return out
end

local function available(u)
    return u.failed_count == 0
end

local function shuffle(list)
    for i = #list, 2, -1 do
        local j = math.random(i)
        list[i], list[j] = list[j], list[i]
    end
    return list
end

-- Fewest failures first, then most successes; id keeps the order stable between requests.
local function by_health(a, b)
    if a.failed_count ~= b.failed_count then
        return a.failed_count < b.failed_count
    end
    if a.success_count ~= b.success_count then
        return a.success_count > b.success_count
    end
    return a.id < b.id
end

-- Oldest last success first, never-used ones before all others (the Go ordering).
local function by_last_success(a, b)
    local ta, tb = a.last_call_success_time, b.last_call_success_time
    if ta ~= tb then
        if ta == nil then
            return true
        end
        if tb == nil then
            return false
        end
        return ta < tb
    end
    return a.id < b.id
end

local policies = {
    main = function(ups)
        local l = copy(ups)
        table.sort(l, by_health)
        return l
    end,
    random = function(ups)
        return shuffle(copy(ups))
    end,
    random_available = function(ups)
        return shuffle(copy(ups, available))
    end,
    round_robin = function(ups)
        local l = copy(ups)
        table.sort(l, by_last_success)
        return l
    end,
    round_robin_available = function(ups)
        local l = copy(ups, available)
        table.sort(l, by_last_success)
        return l
    end,
}

-- The whole ordered list is returned: the proxy fails over along it.
function M.pick_upstream(req, upstreams)
    local name = route.config.get("policy")
    if name == nil or name == "" then
        name = "main"
    end
    local policy = rawget(policies, name)
    if policy == nil then
        return nil, ("unknown load balance policy '%s'"):format(name)
    end
    if #upstreams == 0 then
        return nil, "no upstream available: add one with -add or POST /admin/upstreams"
    end
    local list = policy(upstreams)
    if #list == 0 then
        return nil, ("no upstream available: every upstream has failures (policy '%s')"):format(name)
    end
    return list
end

-- Error notices. The text names the endpoint, status and error, never a key: the C side
-- builds res.error from endpoints only.
local function notify(req, res)
    local feishu, matrix = os.getenv("FEISHU_WEBHOOK"), os.getenv("MATRIX_API")
    if (feishu == nil or feishu == "") and (matrix == nil or matrix == "") then
        return
    end
    local cjson = require "cjson"
    local endpoint = res.upstream and res.upstream.endpoint or "(no upstream)"
    local text = ("openai-api-route: request %s %s to %s failed, status %d: %s"):format(
        req.id, req.path or "", endpoint, res.status or 0, tostring(res.error))
    local headers = { ["content-type"] = "application/json" }
    if feishu ~= nil and feishu ~= "" then
        route.http_post(feishu, cjson.encode({ msg_type = "text", content = { text = text } }), headers)
    end
    if matrix ~= nil and matrix ~= "" then
        route.http_post(matrix, cjson.encode({ msgtype = "m.text", body = text }), headers)
    end
end

-- C has written the row and counted; the default only sends the error notices.
function M.on_response(req, res)
    if res.error and not res.client_aborted then
        notify(req, res)
    end
end

return M
