-- The "unrecorded" target of tests/bench/bench.sh: the default authorize and pick_upstream (in
-- C: this file defines neither), the access log off as in "quiet", and every row vetoed. quiet
-- vs unrecorded is what the records cost on the proxy's one core (building each row on the
-- loop, and above all the writer thread's SQLite inserts), less this hook's own Lua call.
return {
    on_response = function()
        return false
    end,
}
