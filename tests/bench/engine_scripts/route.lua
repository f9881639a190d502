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
    -- Veto the record: the engine alone writes no rows. INTEGRATOR: adjust this line to the
    -- record veto API of issue 8 item 5 once it is settled (today's draft: returning false
    -- from on_response vetoes the record; with the pre-redesign binary, where on_response is
    -- the only writer, any no-op already records nothing).
    on_response = function()
        return false
    end,
}
