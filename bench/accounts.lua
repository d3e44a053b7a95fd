-- wrk script for bench/scaling.py: spread the requests over many accounts, each with its own
-- URL and token, in turn (round-robin in each wrk thread).
--
-- Environment (set by the runner):
--   BENCH_POST_LUA  path of bench/post.lua, run first: the body and the other headers
--                   (BENCH_BODY, BENCH_HEADERS), the counting of every non-2xx status and the
--                   JSON result line all come from it
--   BENCH_ACCOUNTS  a file of "account_id token" lines, one account per line
--
-- The URL given to wrk holds the placeholder ACCOUNT_ID where the account goes, e.g.
-- http://127.0.0.1:P/v1/ACCOUNT_ID/default/openai/chat/completions; each request replaces it
-- with its account and sends that account's token as `Authorization: Bearer <token>`.

dofile(os.getenv("BENCH_POST_LUA") or "bench/post.lua")

-- Main state: number the threads, so that each starts at a different account.
local post_setup = setup
local thread_count = 0

function setup(thread)
   post_setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_number", thread_count)
end

-- Per-thread state: every account's request, formatted once (wrk.format is not free).
local requests = {}
local next_request = 1

local function headers_for(token)
   local headers = {}
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   headers["Authorization"] = "Bearer " .. token
   return headers
end

function init(args)
   local path = os.getenv("BENCH_ACCOUNTS")
   assert(path, "BENCH_ACCOUNTS must name the file of 'account_id token' lines")
   for line in io.lines(path) do
      local account, token = string.match(line, "^(%S+)%s+(%S+)%s*$")
      if account then
         local url_path = string.gsub(wrk.path, "ACCOUNT_ID", account)
         table.insert(requests, wrk.format(nil, url_path, headers_for(token)))
      end
   end
   assert(#requests > 0, "no 'account_id token' line in " .. path)
   next_request = ((thread_number or 1) - 1) % #requests + 1
end

function request()
   local formatted = requests[next_request]
   next_request = next_request % #requests + 1
   return formatted
end
