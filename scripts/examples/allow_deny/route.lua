-- Example: per-upstream allow and deny lists of models. Copy this file to <scripts>/route.lua
-- (or run with -scripts scripts/examples/allow_deny). It overrides only pick_upstream;
-- authorize and on_response stay the defaults.
--
-- Config keys, read on every request (<id> is the upstream's ID, as -list and
-- GET /admin/upstreams show it):
--   allow.<id>   the models this upstream may serve; not set or empty: every model
--   deny.<id>    the models it must never serve; deny wins over allow
-- Each is a comma-separated list; spaces around entries are ignored. An entry is
--   gpt-4o          an exact model name (case-sensitive; '.' and '-' are plain characters)
--   gpt-4*          '*' matches any run of characters, over the whole name: "gpt-4*" takes
--                   gpt-4, gpt-4o and gpt-4-turbo, not ft:gpt-4o
--   ~^claude%-3     after '~', a Lua pattern, found anywhere in the name unless anchored
--                   with ^ and $ ('%' escapes: "%-" is a literal '-', "%." a literal '.')
-- To take an upstream out for every model: deny.<id>=*
--     openai-api-route -set 'allow.1=gpt-4o,gpt-4o-mini'
--     openai-api-route -set 'deny.2=gpt-4*,o1*'
--     openai-api-route -set 'allow.3=~^claude%-'
--
-- The upstreams left are ordered by the usual `policy` key (main, random, round_robin, ...)
-- through the default pick_upstream, and the whole list is returned so the proxy can fail
-- over along it. A request with no model in its body (GET /v1/models, file uploads) is not
-- filtered. When no upstream may serve the model the request gets a 500 with
-- "no upstream allows model '<model>'".
local route = require "route"

-- Warn once per bad pattern (per load of this script), not on every request.
local warned = {}

local function glob_to_pattern(glob)
    local escaped = glob:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0")
    return "^" .. escaped:gsub("%*", ".*") .. "$"
end

-- One entry -> a function(model) -> boolean.
local function compile(entry)
    if entry:sub(1, 1) == "~" then
        local pattern = entry:sub(2)
        return function(model)
            local ok, found = pcall(string.find, model, pattern)
            if not ok then
                if not warned[pattern] then
                    warned[pattern] = true
                    route.log("warn", "allow_deny: bad Lua pattern", entry, found)
                end
                return false
            end
            return found ~= nil
        end
    end
    if entry:find("*", 1, true) then
        local pattern = glob_to_pattern(entry)
        return function(model)
            return model:find(pattern) ~= nil
        end
    end
    return function(model)
        return model == entry
    end
end

-- The comma-separated list in config key `key`, or nil when it is not set or empty.
local function list_of(key)
    local out = {}
    for entry in (route.config.get(key) or ""):gmatch("[^,]+") do
        entry = entry:gsub("^%s+", ""):gsub("%s+$", "")
        if entry ~= "" then
            out[#out + 1] = compile(entry)
        end
    end
    return #out > 0 and out or nil
end

local function any(list, model)
    for _, matches in ipairs(list) do
        if matches(model) then
            return true
        end
    end
    return false
end

local function serves(u, model)
    local deny = list_of("deny." .. tostring(u.id))
    if deny and any(deny, model) then
        return false
    end
    local allow = list_of("allow." .. tostring(u.id))
    return allow == nil or any(allow, model)
end

local function pick_upstream(req, upstreams)
    local model = req.model
    if model == nil or #upstreams == 0 then
        return route.defaults.pick_upstream(req, upstreams)
    end
    local left = {}
    for _, u in ipairs(upstreams) do
        if serves(u, model) then
            left[#left + 1] = u
        end
    end
    if #left == 0 then
        return nil, ("no upstream allows model '%s'"):format(model)
    end
    -- Filtering first and ordering after gives the same order as filtering the default
    -- ordering (every policy orders upstreams by their own fields), with the clearer message.
    return route.defaults.pick_upstream(req, left)
end

return { pick_upstream = pick_upstream }
