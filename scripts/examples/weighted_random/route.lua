-- Example: weighted random load balancing. Copy this file to <scripts>/route.lua (or run with
-- -scripts scripts/examples/weighted_random). It overrides only pick_upstream; authorize and
-- on_response stay the defaults.
--
-- Weights come from the config key `weights`, read on every request:
--     openai-api-route -set weights=1=3,2=1
--     openai-api-route -set 'weights=https://api.openai.com/v1=5,2=1'
-- Each entry is <upstream id or endpoint>=<weight>; an upstream not named weighs 1. An
-- upstream with weight 0 is only tried after all the others.
--
-- The whole list is returned, drawn without replacement by weight, so the proxy can still
-- fail over along it: an upstream with weight 3 comes first three times as often as one
-- with weight 1.
local route = require "route"

local function parse_weights(text)
    local weights = {}
    for entry in (text or ""):gmatch("[^,]+") do
        -- The key is everything before the last '=': an endpoint URL may hold one.
        local key, w = entry:match("^%s*(.-)%s*=%s*([%d%.]+)%s*$")
        local n = tonumber(w)
        if key and key ~= "" and n and n >= 0 then
            weights[key] = n
        else
            route.log("warn", "weighted_random: ignoring weights entry", entry)
        end
    end
    return weights
end

local function weight_of(weights, u)
    return weights[tostring(u.id)] or weights[u.endpoint] or 1
end

local function pick_upstream(req, upstreams)
    if #upstreams == 0 then
        return nil, "no upstream available: add one with -add or POST /admin/upstreams"
    end
    local weights = parse_weights(route.config.get("weights"))
    -- Efraimidis-Spirakis: sorting by u^(1/w) descending is a weighted draw without
    -- replacement, all in one pass.
    local keyed = {}
    for _, u in ipairs(upstreams) do
        local w = weight_of(weights, u)
        local k
        if w > 0 then
            k = math.random() ^ (1 / w)
        else
            k = -1 - math.random() -- after every positive weight, in random order
        end
        keyed[#keyed + 1] = { u = u, k = k }
    end
    table.sort(keyed, function(a, b)
        return a.k > b.k
    end)
    local list = {}
    for i, e in ipairs(keyed) do
        list[i] = e.u
    end
    return list
end

return { pick_upstream = pick_upstream }
