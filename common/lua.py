"""The Lua scripts behind `common.state.StateStore`.

Each runs atomically inside Redis, so producers and workers see one order of events. They build
keys from the prefix they are given (`common.keys.Keys` spells the same names in Python), which
ties batchscribe to a single Redis primary rather than Redis Cluster.
"""

# Shared Lua: move one file ("batch_id:index") to a new state, keep the batch counters exact.
# Returns 1 when this move completed the batch (every file done or failed), else 0.
_LUA_PRELUDE = r"""
local function file_move(prefix, target, new_state, fields, now)
  local sep = string.find(target, ":[^:]*$")
  local bid = string.sub(target, 1, sep - 1)
  local idx = string.sub(target, sep + 1)
  local fkey = prefix .. ":file:" .. target
  local bkey = prefix .. ":batch:" .. bid
  local old = redis.call("HGET", fkey, "state")
  if not old then return 0 end
  for i = 1, #fields, 2 do redis.call("HSET", fkey, fields[i], fields[i + 1]) end
  if old == new_state then return 0 end
  if old == "done" and new_state ~= "queued" then return 0 end
  redis.call("HSET", fkey, "state", new_state)
  redis.call("HINCRBY", bkey, "n_" .. old, -1)
  redis.call("HINCRBY", bkey, "n_" .. new_state, 1)
  if new_state == "done" then
    local dur = redis.call("HGET", fkey, "duration") or "0"
    redis.call("HINCRBYFLOAT", bkey, "audio_done", dur)
  end
  if new_state == "failed" then redis.call("SADD", bkey .. ":failed", idx) end
  if old == "failed" then redis.call("SREM", bkey .. ":failed", idx) end
  if new_state == "done" or new_state == "failed" then
    local b = redis.call("HMGET", bkey, "total", "n_done", "n_failed")
    if tonumber(b[2] or 0) + tonumber(b[3] or 0) == tonumber(b[1] or -1) then
      redis.call("HSET", bkey, "finished_at", now)
      return 1
    end
  end
  return 0
end
local function job_files(prefix, jkey, new_state, fields, now)
  local targets = redis.call("LRANGE", jkey .. ":targets", 0, -1)
  for _, t in ipairs(targets) do file_move(prefix, t, new_state, fields, now) end
  return targets
end
"""

# KEYS: none. ARGV: prefix, now, owner, claim_ttl, then (job_key, target, duration) triples.
# Per item: "claimed" (caller must publish), "attached" (someone else will), "done" (cached result).
CLAIM = _LUA_PRELUDE + r"""
local prefix, now, owner, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 3 do
  local jk, target, dur = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local jkey = prefix .. ":job:" .. jk
  local j = redis.call("HMGET", jkey, "state", "claim_deadline")
  local st = j[1]
  local has_result = redis.call("EXISTS", prefix .. ":result:" .. jk) == 1
  if st == "done" and has_result then
    out[#out + 1] = "done"
  else
    local claimable = (not st) or st == "failed" or (st == "done")
        or (st == "claimed" and tonumber(j[2] or 0) < now)
    if claimable then
      redis.call("HSET", jkey, "state", "claimed", "owner", owner, "claim_deadline", now + ttl,
                 "duration", dur, "attempts", 0, "crashes", 0, "reroutes", 0,
                 "error_class", "", "reason", "")
      out[#out + 1] = "claimed"
    else
      out[#out + 1] = "attached"
    end
    if redis.call("LPOS", jkey .. ":targets", target) == false then
      redis.call("RPUSH", jkey .. ":targets", target)
    end
  end
end
return out
"""

# ARGV: prefix, owner, job keys... : claimed -> queued once the task is on the broker.
PUBLISHED = r"""
local prefix, owner = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local jkey = prefix .. ":job:" .. ARGV[i]
  local j = redis.call("HMGET", jkey, "state", "owner")
  if j[1] == "claimed" and j[2] == owner then redis.call("HSET", jkey, "state", "queued") end
end
return 1
"""

# Shared Lua: put a job in the delayed set. "force" overwrites the due time and the task spec; else
# an existing entry wins (it will arrive anyway and look again).
_LUA_DELAY = r"""
local function delay_job(prefix, jk, due, spec, force)
  local added
  if force then added = redis.call("ZADD", prefix .. ":delayed", due, jk)
  else added = redis.call("ZADD", prefix .. ":delayed", "NX", due, jk) end
  if force or added == 1 then redis.call("HSET", prefix .. ":delayed:specs", jk, spec) end
end
local function undelay_job(prefix, jk)
  redis.call("ZREM", prefix .. ":delayed", jk)
  redis.call("HDEL", prefix .. ":delayed:specs", jk)
end
"""

# ARGV: prefix, job_key, endpoint, now, delivery_id, lease_ttl, spec (published again if not run),
# max_bounces, bounce_due.
# Returns {verdict, attempts, crashes, reroutes, first_started_at, crashed_endpoint, lease_until,
# targets...}; verdict is the previous state, or "deferred" when a live lease is held by another
# delivery, or "bounced" when the job's last attempt failed on this very endpoint and it goes back
# to the pool (at most max_bounces times per failure) so that another endpoint can take it.
START = _LUA_PRELUDE + _LUA_DELAY + r"""
local prefix, jk, endpoint, now, delivery = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local ttl, spec, max_bounces, bounce_due = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), ARGV[9]
local jkey = prefix .. ":job:" .. jk
local j = redis.call("HMGET", jkey, "state", "attempts", "crashes", "delivery", "lease_until",
                     "reroutes", "first_started_at", "endpoint", "avoid", "bounces")
local prev = j[1] or "missing"
local function reply(verdict, attempts, crashes, crashed, lease, targets)
  local r = {verdict, tostring(attempts), tostring(crashes), j[6] or "0", j[7] or "", crashed,
             tostring(lease)}
  for _, t in ipairs(targets) do r[#r + 1] = t end
  return r
end
if prev == "done" or prev == "missing" or prev == "failed" then
  return reply(prev, j[2] or "0", j[3] or "0", "", 0, redis.call("LRANGE", jkey .. ":targets", 0, -1))
end
if (prev == "retrying" or prev == "queued") and j[9] == endpoint
    and tonumber(j[10] or 0) < max_bounces then
  redis.call("HINCRBY", jkey, "bounces", 1)
  delay_job(prefix, jk, bounce_due, spec, true)
  return reply("bounced", j[2] or "0", j[3] or "0", "", 0, {})
end
local crashes, crashed = tonumber(j[3] or 0), ""
if prev == "running" and j[4] and j[4] ~= "" and j[4] ~= delivery then
  local lease = tonumber(j[5] or 0) or 0
  if lease > now then   -- alive elsewhere: come back when its lease would have run out
    delay_job(prefix, jk, lease + 1, spec, false)
    return reply("deferred", j[2] or "0", crashes, "", lease, {})
  end
  crashes = crashes + 1   -- its lease ran out: the worker died mid-file
  crashed = j[8] or ""
  redis.call("HSET", jkey, "crashes", crashes)
  if crashed ~= "" then redis.call("HINCRBY", prefix .. ":epstats:" .. crashed, "failed_crash", 1) end
end
undelay_job(prefix, jk)   -- this delivery is the one that runs; an older delayed copy is moot
local attempts = redis.call("HINCRBY", jkey, "attempts", 1)
redis.call("HSET", jkey, "state", "running", "endpoint", endpoint, "started_at", now,
           "delivery", delivery, "lease_until", now + ttl)
redis.call("HSETNX", jkey, "first_started_at", now)
local targets = job_files(prefix, jkey, "running",
  {"endpoint", endpoint, "started_at", now, "attempts", attempts}, now)
return reply(prev, attempts, crashes, crashed, now + ttl, targets)
"""

# ARGV: prefix, job_key, delivery_id, new job state (retrying|queued), error_class, reason, now,
# spend(0|1), due, spec. Back to waiting and into the delayed set in one step, only if the job is
# still held by this delivery. Returns the reroute count, or -1 when another delivery holds it.
REQUEUE = _LUA_PRELUDE + _LUA_DELAY + r"""
local prefix, jk, delivery, st = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cls, reason, now, spend, due, spec = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local jkey = prefix .. ":job:" .. jk
if redis.call("HGET", jkey, "delivery") ~= delivery then return -1 end
redis.call("HSET", jkey, "state", st, "error_class", cls, "reason", reason, "delivery", "",
           "lease_until", "", "avoid", redis.call("HGET", jkey, "endpoint") or "", "bounces", 0)
if spend == "0" then
  redis.call("HINCRBY", jkey, "attempts", -1)
  redis.call("HINCRBY", jkey, "reroutes", 1)
end
delay_job(prefix, jk, due, spec, true)
job_files(prefix, jkey, st == "queued" and "queued" or "retrying",
  {"error_class", cls, "reason", reason}, now)
return tonumber(redis.call("HGET", jkey, "reroutes") or 0)
"""

# ARGV: prefix, job_key, final state (done|failed), error_class, reason, now, ttl, result blob.
FINISH = _LUA_DELAY + r"""
local prefix, jk, st, cls, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, ttl = ARGV[6], tonumber(ARGV[7])
local jkey = prefix .. ":job:" .. jk
redis.call("HSET", jkey, "state", st, "error_class", cls, "reason", reason, "finished_at", now,
           "delivery", "", "lease_until", "")
undelay_job(prefix, jk)
if st == "done" then
  local rkey = prefix .. ":result:" .. jk
  if ttl > 0 then redis.call("SET", rkey, ARGV[8], "EX", ttl) else redis.call("SET", rkey, ARGV[8]) end
end
return redis.call("LRANGE", jkey .. ":targets", 0, -1)
"""

# ARGV: prefix, target, new state, job_key ("" to keep targets), then field/value pairs.
SETTLE = _LUA_PRELUDE + r"""
local prefix, target, st, jk = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local complete = file_move(prefix, target, st, fields, ARGV[6])
if jk ~= "" then redis.call("LREM", prefix .. ":job:" .. jk .. ":targets", 0, target) end
return complete
"""


# ARGV: prefix, now, lease_until, kombu unacked index key, then (job_key, delivery, tag) triples.
# Extends each lease still held by its delivery and marks each delivery tag as seen now, so kombu
# does not restore it. Returns per item {lease extended 0|1, tag refreshed 0|1}.
EXTEND = r"""
local prefix, now, lease, index = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for i = 5, #ARGV, 3 do
  local jkey = prefix .. ":job:" .. ARGV[i]
  local ours = redis.call("HGET", jkey, "delivery") == ARGV[i + 1]
  if ours then redis.call("HSET", jkey, "lease_until", lease) end
  local seen = 0
  if ARGV[i + 2] ~= "" then seen = redis.call("ZADD", index, "XX", "CH", now, ARGV[i + 2]) end
  out[#out + 1] = ours and 1 or 0
  out[#out + 1] = seen
end
return out
"""

# ARGV: prefix, now, claim deadline, limit. Expired claims (a promoter died mid-way) go back to
# the delayed set first; then up to `limit` due entries move to the claims set until the deadline.
# Returns {job_key, spec, ...} of the claimed entries.
CLAIM_DUE = r"""
local prefix, now, deadline, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local delayed, claims = prefix .. ":delayed", prefix .. ":delayed:claims"
for _, jk in ipairs(redis.call("ZRANGEBYSCORE", claims, "-inf", now)) do
  redis.call("ZREM", claims, jk)
  redis.call("ZADD", delayed, "NX", now, jk)
end
local out = {}
for _, jk in ipairs(redis.call("ZRANGEBYSCORE", delayed, "-inf", now, "LIMIT", 0, limit)) do
  redis.call("ZREM", delayed, jk)
  redis.call("ZADD", claims, deadline, jk)
  out[#out + 1] = jk
  out[#out + 1] = redis.call("HGET", prefix .. ":delayed:specs", jk) or ""
end
return out
"""

# ARGV: prefix, claim deadline, job keys... : drop this promoter's claims once published. A claim
# re-taken by another promoter (other deadline) is left alone, and so is the spec of a job that
# was delayed again meanwhile.
RELEASE = r"""
local prefix, deadline = ARGV[1], tonumber(ARGV[2])
local delayed, claims = prefix .. ":delayed", prefix .. ":delayed:claims"
for i = 3, #ARGV do
  local jk = ARGV[i]
  if tonumber(redis.call("ZSCORE", claims, jk) or -1) == deadline then redis.call("ZREM", claims, jk) end
  if not redis.call("ZSCORE", delayed, jk) and not redis.call("ZSCORE", claims, jk) then
    redis.call("HDEL", prefix .. ":delayed:specs", jk)
  end
end
return 1
"""

# ARGV: prefix, batch_id, then (output digest, input tag) pairs; tags are 16 bytes. A claim's
# value is the input tag followed by the batch id. All or nothing: if a batch that is still running
# (done + failed < total) holds an output for another input, nothing is written and the reply lists
# {position (1-based), other batch, ...} of each clash; else every output is claimed, reply {}.
# The same input submitted again (a re-run after Ctrl-C) takes its output over; a claim of a
# finished or vanished batch is stale and taken over too.
CLAIM_OUTPUTS = r"""
local prefix, bid = ARGV[1], ARGV[2]
local hkey = prefix .. ":outputs"
local live = {}
local function running(other)
  if live[other] == nil then
    local b = redis.call("HMGET", prefix .. ":batch:" .. other, "total", "n_done", "n_failed")
    live[other] = (b[1] and tonumber(b[2] or 0) + tonumber(b[3] or 0) < tonumber(b[1])) or false
  end
  return live[other]
end
local clashes, position = {}, 0
for i = 3, #ARGV, 2 do
  position = position + 1
  local held = redis.call("HGET", hkey, ARGV[i])
  if held and string.sub(held, 1, 16) ~= ARGV[i + 1] then
    local other = string.sub(held, 17)
    if other ~= bid and running(other) then
      clashes[#clashes + 1] = tostring(position)
      clashes[#clashes + 1] = other
    end
  end
end
if #clashes > 0 then return clashes end
for i = 3, #ARGV, 2 do redis.call("HSET", hkey, ARGV[i], ARGV[i + 1] .. bid) end
return clashes
"""

# ARGV: prefix, batch_id, then output digests: drop the claims this batch still holds.
RELEASE_OUTPUTS = r"""
local hkey = ARGV[1] .. ":outputs"
for i = 3, #ARGV do
  local held = redis.call("HGET", hkey, ARGV[i])
  if held and string.sub(held, 17) == ARGV[2] then redis.call("HDEL", hkey, ARGV[i]) end
end
return 1
"""
