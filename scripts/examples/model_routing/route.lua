-- Example: route by model. Copy this file to <scripts>/route.lua (or run with
-- -scripts scripts/examples/model_routing). It overrides only pick_upstream; authorize and
-- on_response stay the defaults.
--
-- Requests whose body names a model matching `gpt4_models` (a Lua pattern, default
-- "^gpt%-4") go only to upstreams whose endpoint matches one of the comma-separated Lua
-- patterns in `gpt4_endpoints`; every other request goes only to the remaining upstreams.
-- Within each group the usual `policy` key (main, random, round_robin, ...) orders them,
-- by delegating to the default pick_upstream. Both keys are read on every request:
--     openai-api-route -set 'gpt4_endpoints=azure%.com,gpt4%-proxy'
--     openai-api-route -set 'gpt4_models=^gpt%-4'
-- In Lua patterns '%' escapes magic characters: write "api%.openai%.com" for a literal dot.
local route = require "route"

local function split(text)
    local out = {}
    for p in (text or ""):gmatch("[^,]+") do
        p = p:gsub("^%s+", ""):gsub("%s+$", "")
        if p ~= "" then
            out[#out + 1] = p
        end
    end
    return out
end

local function matches_any(s, patterns)
    for _, p in ipairs(patterns) do
        local ok, found = pcall(string.find, s, p)
        if ok and found then
            return true
        end
    end
    return false
end

local function pick_upstream(req, upstreams)
    local model_pattern = route.config.get("gpt4_models") or "^gpt%-4"
    local endpoints = split(route.config.get("gpt4_endpoints"))
    local wants_gpt4 = req.model ~= nil and req.model:find(model_pattern) ~= nil

    local group = {}
    for _, u in ipairs(upstreams) do
        if matches_any(u.endpoint, endpoints) == wants_gpt4 then
            group[#group + 1] = u
        end
    end
    if #group == 0 then
        return nil, ("no upstream serves model '%s' (see gpt4_endpoints)"):format(
            req.model or "(none)")
    end
    return route.defaults.pick_upstream(req, group)
end

return { pick_upstream = pick_upstream }
