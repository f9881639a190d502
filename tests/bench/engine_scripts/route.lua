-- The "engine alone" target of tests/bench/bench.sh: hooks that return at once, so the
-- benchmark measures the proxy's C request path (parsing, routing, pooling, streaming)
-- without authorization, policy sorting or recording.
return {
    authorize = function()
        return true
    end,
    pick_upstream = function(req, upstreams)
        return upstreams[1]
    end,
    -- Veto the record (README, "on_response"): the engine alone writes no rows. The access log
    -- and /metrics still see every request, as they do in the default target.
    on_response = function()
        return false
    end,
}
