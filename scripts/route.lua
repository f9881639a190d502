-- route.lua: the default hooks, compiled into the binary. A scripts/route.lua of your own
-- returns a table with any of these three functions; the ones it leaves out fall back to
-- these. The C proxy does the networking: hooks only decide (who may call, which upstreams in
-- which order) and record. They must not block: there is no sleep, no socket, no file I/O on
-- the request path here (route.http_post is asynchronous).
--
--   authorize(req)               -> true | false, status, message
--   pick_upstream(req, upstreams) -> upstream | {upstream, ...} | nil, message
--   on_response(req, res)        -> nothing; records the exchange and counts successes
local route = require "route"

local M = {}

-- Go's strings.Trim(s, " "): spaces only, so a tab in a token stays part of it.
local function trim_spaces(s)
    return (s:gsub("^ +", ""):gsub(" +$", ""))
end

local function trim_space(s)
    return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

function M.authorize(req)
    if route.config.get("noauth") == "true" then
        return true
    end
    local header = req.headers["authorization"]
    -- Case-sensitive plain prefix, as the Go program checked it: "bearer x" is refused.
    if header == nil or header:sub(1, 6) ~= "Bearer" then
        return false, 403, "authorization header should start with 'Bearer'"
    end
    local token = trim_spaces(header:sub(7))
    local ok = false
    -- Every configured token is compared even after a match, so the time taken does not
    -- tell which one (or whether an early one) matched.
    for candidate in (route.config.get("authorization") or ""):gmatch("[^,]+") do
        candidate = trim_space(candidate)
        if candidate ~= "" then
            local same = route.secure_compare(token, candidate)
            ok = ok or same
        end
    end
    if ok then
        return true
    end
    return false, 403, "wrong authorization header"
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

function M.on_response(req, res)
    local up, usage = res.upstream, res.usage
    route.record {
        id = req.id,
        ip = req.client_ip,
        body = req.body,
        response = res.content,
        model = req.model or res.model or req.path,
        status = res.status,
        upstream_id = up and up.id,
        upstream_endpoint = up and up.endpoint,
        prompt_tokens = usage and usage.prompt_tokens,
        completion_tokens = usage and usage.completion_tokens,
        total_tokens = usage and usage.total_tokens,
        elapsed = res.elapsed,
        response_time = res.ttfb,
        user_agent = req.headers["user-agent"],
        error = res.error,
    }

    -- The proxy already decided which attempts count as upstream failures (client 4xx, a
    -- client abort and sk "asis" 401/403 do not).
    local attempts = res.attempts or {}
    for _, a in ipairs(attempts) do
        if a.failed and a.upstream and a.upstream.id then
            route.upstream_failed(a.upstream.id)
        end
    end
    local last = attempts[#attempts]
    local status = res.status or 0
    if up and up.id and status >= 200 and status < 400 and not res.client_aborted
        and not (last and last.failed) then
        route.upstream_success(up.id)
    end

    if res.error and not res.client_aborted then
        notify(req, res)
    end
end

return M
