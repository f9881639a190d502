-- Example: latency-aware routing. Copy this file to <scripts>/route.lua (or run with
-- -scripts scripts/examples/latency_aware). It overrides pick_upstream and on_response;
-- authorize stays the default, and on_response still calls the default one (the error
-- notices). Records and the success/failure counters are written by the proxy itself, whatever
-- on_response does. The `policy` key is not used.
--
-- on_response keeps, per upstream id, an exponentially weighted moving average (EWMA) of the
-- time to the response headers (res.ttfb, float seconds), and the time of the upstream's
-- last failed attempt. Streamed and whole answers are averaged apart: the headers of a stream
-- come at the first token, those of a whole answer after the last one. Only an exchange
-- answered by its first attempt gives a sample (after a failover, ttfb also holds the time
-- spent on the attempts that failed). All of it lives in route.shared, so it survives reloads.
--
-- pick_upstream returns every upstream, in this order, so the proxy can still fail over:
--   1. upstreams without a recent failure, those never measured (or measured too long ago)
--      first so they get measured, then by lowest average;
--   2. then upstreams that failed recently, the one whose failure is oldest first.
-- A success takes an upstream's failure mark away.
--
-- Config keys, read on every request:
--   latency_alpha             weight of the newest sample, 0 < alpha <= 1     (default 0.3)
--   latency_failure_cooldown  seconds an upstream stays at the back after a failed attempt
--                             (default 30; 0: failures do not reorder)
--   latency_remeasure         seconds after which an average is old and the upstream counts
--                             as unmeasured again, so a slow one gets another chance
--                             (default 300; 0: never)
--     openai-api-route -set latency_alpha=0.5
--     openai-api-route -set latency_failure_cooldown=60
local route = require "route"

-- route.shared.latency_aware = { ewma = {[id] = {[kind] = s}}, measured_at = {[id] = {[kind] =
-- seconds}}, failed_at = {[id] = seconds} }
local function state()
    local s = route.shared.latency_aware
    if type(s) ~= "table" then
        s = { ewma = {}, measured_at = {}, failed_at = {} }
        route.shared.latency_aware = s
    end
    return s
end

local function number_key(name, default, min, max)
    local v = tonumber(route.config.get(name) or "")
    if v == nil or v ~= v or v < min or v > max then
        return default
    end
    return v
end

local function kind_of(req)
    return req.stream and "stream" or "whole"
end

local function pick_upstream(req, upstreams)
    if #upstreams == 0 then
        return nil, "no upstream available: add one with -add or POST /admin/upstreams"
    end
    local s = state()
    local now = route.now()
    local cooldown = number_key("latency_failure_cooldown", 30, 0, math.huge)
    local remeasure = number_key("latency_remeasure", 300, 0, math.huge)
    local kind = kind_of(req)
    req.ctx.kind = kind

    local entries = {}
    for _, u in ipairs(upstreams) do
        local failed_at = s.failed_at[u.id]
        local e = { u = u, failed_at = failed_at }
        e.failed = failed_at ~= nil and now - failed_at < cooldown
        local avg = s.ewma[u.id] and s.ewma[u.id][kind]
        local at = s.measured_at[u.id] and s.measured_at[u.id][kind]
        if avg ~= nil and (remeasure == 0 or (at ~= nil and now - at < remeasure)) then
            e.ewma = avg
        end
        entries[#entries + 1] = e
    end

    table.sort(entries, function(a, b)
        if a.failed ~= b.failed then
            return not a.failed
        end
        if a.failed then -- both failed recently: the older failure first
            if a.failed_at ~= b.failed_at then
                return a.failed_at < b.failed_at
            end
        elseif (a.ewma == nil) ~= (b.ewma == nil) then
            return a.ewma == nil -- unmeasured first
        elseif a.ewma ~= nil and a.ewma ~= b.ewma then
            return a.ewma < b.ewma
        end
        return a.u.id < b.u.id
    end)

    local list = {}
    for i, e in ipairs(entries) do
        list[i] = e.u
    end
    return list
end

local function on_response(req, res)
    -- The default's error notices; the row and the counters are the proxy's own.
    route.defaults.on_response(req, res)

    local s = state()
    local now = route.now()
    local attempts = res.attempts or {}
    for _, a in ipairs(attempts) do
        local id = a.upstream and a.upstream.id
        if id and id > 0 then
            if a.failed then
                s.failed_at[id] = now
            end
        end
    end

    local up = res.upstream
    local last = attempts[#attempts]
    if up == nil or up.id == nil or up.id <= 0 or res.client_aborted or (last and last.failed) then
        return
    end
    s.failed_at[up.id] = nil
    if #attempts ~= 1 or not res.ttfb or res.ttfb <= 0 then
        return
    end
    local alpha = number_key("latency_alpha", 0.3, 1e-9, 1)
    local kind = req.ctx.kind or kind_of(req)
    s.ewma[up.id] = s.ewma[up.id] or {}
    s.measured_at[up.id] = s.measured_at[up.id] or {}
    local old = s.ewma[up.id][kind]
    local at = s.measured_at[up.id][kind]
    local remeasure = number_key("latency_remeasure", 300, 0, math.huge)
    if old == nil or (remeasure > 0 and (at == nil or now - at >= remeasure)) then
        s.ewma[up.id][kind] = res.ttfb -- first (or fresh) sample: no history to blend with
    else
        s.ewma[up.id][kind] = old + alpha * (res.ttfb - old)
    end
    s.measured_at[up.id][kind] = now
end

return { pick_upstream = pick_upstream, on_response = on_response }
