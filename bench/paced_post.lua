-- wrk script for bench/soak.py: bench/post.lua's requests and report, each connection pausing
-- BENCH_DELAY_MS milliseconds before each request, so the load is a steady fraction of what the
-- gateway can serve instead of all it can take.
dofile(os.getenv("BENCH_POST_LUA"))

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

function delay()
   return pause
end
