"""Every Lua script batchscribe runs in Redis, behind `common.state.StateStore`.

Each runs atomically inside Redis, so producers and workers see one order of events.

One convention for all of them:

* ``KEYS[1]`` is the key prefix (the keyspace). The store passes it; no script takes it in ARGV.
* ``KEYS[2..]`` are the keys known before the call (the one job's hash, the delayed set, an owner
  key, …), in the order each script's header lists them; the store spells them with
  `common.keys.Keys`.
* Keys that depend on data read inside the script (the file and batch of each of a job's
  targets, the endpoint a dead delivery ran on) or on a variable-length list of items (the jobs of
  a claim chunk) are derived with ``K``, the `KEYSPACE` helper below: the Lua mirror of
  `common.keys.Keys`, and the only place a script builds a key name
  (tests/integration/test_state.py checks that both spell the same names).
* ARGV holds values only: ids, states, TTLs and ``now``, which comes from the store's clock so
  tests can control time.

Deriving keys inside scripts ties batchscribe to a single Redis primary, not Redis Cluster.
"""

# The key names of common.keys.Keys, from the prefix in KEYS[1]. Keep the two in step.
KEYSPACE = r"""
local K = {}
do
  local p = KEYS[1]
  function K.batch(bid) return p .. ":batch:" .. bid end
  function K.failed(bid, cls) return p .. ":batch:" .. bid .. ":failed:" .. cls end
  -- target = "batch_id:index": its records' hash, its two fields (what the producer wrote, what
  -- became of it), its batch and index
  function K.file(target)
    local sep = string.find(target, ":[^:]*$")
    local bid, idx = string.sub(target, 1, sep - 1), tonumber(string.sub(target, sep + 1))
    local slot = tostring(idx % 64)
    return p .. ":files:" .. bid .. ":" .. tostring(math.floor(idx / 64)), slot, slot .. "s", bid, idx
  end
  function K.job(jk) return p .. ":job:" .. jk end
  function K.targets(jk) return p .. ":job:" .. jk .. ":targets" end
  function K.result(jk) return p .. ":cached:" .. jk end
  -- a job waiting for its first start: its hash and field ("HEX.HEX" keys as their bytes)
  local BYTE = {}
  for i = 0, 255 do
    local c = string.char(i)
    BYTE[string.format("%02x", i)] = c
  end
  function K.waiting(jk)
    local field = jk
    local sha, opts = string.match(jk, "^([0-9a-f]+)%.([0-9a-f]+)$")
    if sha and #sha % 2 == 0 and #opts % 2 == 0 then
      field = string.gsub(sha .. opts, "..", BYTE)
    end
    return p .. ":jobs:" .. string.sub(jk, 1, 3), field
  end
  local function bucket(digest)   -- the first 12 bits of a digest, as 3 hex digits
    local b1, b2 = string.byte(digest, 1, 2)
    return string.format("%03x", math.floor(((b1 or 0) * 256 + (b2 or 0)) / 16))
  end
  function K.outputs(digest) return p .. ":outputs:" .. bucket(digest) end
  function K.fingerprints(digest) return p .. ":fp:" .. bucket(digest) end
  function K.inflight(endpoint) return p .. ":inflight:" .. endpoint end
  function K.endpoint_stats(endpoint) return p .. ":epstats:" .. endpoint end
end
"""

# Shared Lua: file records (common.state.records says the layout). What the producer wrote (field
# SLOT) starts with "h" + the 32 bytes of the sha256 or "-", then NUL-separated text: duration,
# where the relative path is, the path, an output and a job key when they are not the derived ones.
# What became of the file (field SLOTs, absent while queued and untouched) is
# "state|attempts|endpoint|started_at|finished_at|error_class|cached|reason", finished_at as
# "+SECONDS" after started_at when it is not before it (8 bytes less per finished file).
_RECORDS = r"""
local FIELDS = {state = 1, attempts = 2, endpoint = 3, started_at = 4, finished_at = 5,
                error_class = 6, cached = 7, reason = 8}
local QUEUED = {"queued", "0", "", "", "", "", "", ""}
local function file_fields(blob)
  if not blob then return {unpack(QUEUED)} end
  local f = {string.match(blob, "^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$")}
  if string.sub(f[5], 1, 1) == "+" then
    f[5] = string.format("%.3f", (tonumber(f[4]) or 0) + tonumber(string.sub(f[5], 2)))
  end
  return f
end
local function file_blob(f)
  local started, finished, kept = tonumber(f[4]), tonumber(f[5]), {unpack(f)}
  if started and finished and finished >= started then
    kept[5] = "+" .. string.gsub(string.gsub(string.format("%.3f", finished - started), "0+$", ""), "%.$", "")
  end
  return table.concat(kept, "|")
end
local function info_text(info)
  return string.sub(info, string.sub(info, 1, 1) == "h" and 34 or 2)
end
local function info_duration(info)
  return string.match(info_text(info), "^([^%z]*)") or "0"
end
-- the job key of a record: the one written with it, else its sha256 (hex) and the batch's options
local function info_job(info, options_key)
  local explicit = string.match(info_text(info), "^[^%z]*%z[^%z]*%z[^%z]*%z[^%z]*%z([^%z]*)")
  if explicit == "\1" then return "" end
  if explicit and explicit ~= "" then return explicit end
  if string.sub(info, 1, 1) ~= "h" then return "" end
  local hex = string.gsub(string.sub(info, 2, 33), ".",
                          function(c) return string.format("%02x", string.byte(c)) end)
  return hex .. "." .. (options_key or "")
end
"""

# Shared Lua: move one file ("batch_id:index") to a new state, keep the batch counters exact (files
# by state, failed files by class, each class's indexes). Returns 1 when this move completed the
# batch (every file done, failed or cancelled), else 0. A cancelled file stays cancelled (nothing
# is written into its record) unless it is queued again. `fields`: name/value pairs of what became
# of the file (FIELDS); "info" replaces what the producer wrote (a file fingerprinted again).
_FILES = KEYSPACE + _RECORDS + r"""
local function file_move(target, new_state, fields, now)
  local fkey, slot, sfield, bid, idx = K.file(target)
  local info = redis.call("HGET", fkey, slot)
  if not info then return 0 end
  local bkey = K.batch(bid)
  local f = file_fields(redis.call("HGET", fkey, sfield))
  local old, old_class = f[1], f[6]
  if old == "cancelled" and new_state ~= "queued" then return 0 end
  for i = 1, #fields, 2 do
    local at = FIELDS[fields[i]]
    if at then f[at] = fields[i + 1]
    elseif fields[i] == "info" then redis.call("HSET", fkey, slot, fields[i + 1]) info = fields[i + 1] end
  end
  local moves = old ~= new_state and not (old == "done" and new_state ~= "queued")
  if moves then f[1] = new_state end
  redis.call("HSET", fkey, sfield, file_blob(f))
  local cls = f[6] ~= "" and f[6] or "unknown"
  old_class = old_class ~= "" and old_class or "unknown"
  if old == "failed" and (f[1] ~= "failed" or cls ~= old_class) then
    redis.call("ZREM", K.failed(bid, old_class), idx)
    redis.call("HINCRBY", bkey, "f_" .. old_class, -1)
  end
  if f[1] == "failed" and (old ~= "failed" or cls ~= old_class) then
    redis.call("ZADD", K.failed(bid, cls), idx, idx)
    redis.call("HINCRBY", bkey, "f_" .. cls, 1)
  end
  if not moves then return 0 end
  redis.call("HINCRBY", bkey, "n_" .. old, -1)
  redis.call("HINCRBY", bkey, "n_" .. new_state, 1)
  if new_state == "done" then
    redis.call("HINCRBYFLOAT", bkey, "audio_done", info_duration(info))
  end
  if new_state == "done" or new_state == "failed" or new_state == "cancelled" then
    local b = redis.call("HMGET", bkey, "total", "n_done", "n_failed", "n_cancelled")
    if tonumber(b[2] or 0) + tonumber(b[3] or 0) + tonumber(b[4] or 0) == tonumber(b[1] or -1) then
      redis.call("HSET", bkey, "finished_at", now)
      return 1
    end
  end
  return 0
end
local function job_files(targets_key, new_state, fields, now)
  local targets = redis.call("LRANGE", targets_key, 0, -1)
  for _, t in ipairs(targets) do file_move(t, new_state, fields, now) end
  return targets
end
"""

# Shared Lua: a job claimed or queued that never started is one field of a `waiting` hash (a job's
# own hash and targets list cost ~500 bytes in Redis 7.0): "KIND|A|B|first target", KIND c
# (claimed: A the owner, B the claim deadline), q (queued: A since when), x (cancelled: A when).
# Further targets are in the job's targets list. Its first start makes it a job hash (`own_job`).
# A done job whose inputs all have their outcome is one such field again, d: "d|attempts|crashes|
# endpoint|handbacks|reroutes", without "|0|0" when it was neither handed back nor rerouted
# (`retire_job`), beside its cached result.
_WAITING = r"""
local WAITING_STATE = {c = "claimed", q = "queued", x = "cancelled", d = "done"}
local function waiting_entry(jk)
  local wkey, wfield = K.waiting(jk)
  local w = redis.call("HGET", wkey, wfield)
  if not w then return nil end
  local kind, a, b, t = string.match(w, "^(%a)|([^|]*)|([^|]*)|(.*)$")
  return {state = WAITING_STATE[kind], kind = kind, a = a, b = b, target = t, key = wkey, field = wfield}
end
local function put_waiting(w, kind, a, b, target)
  redis.call("HSET", w.key, w.field, kind .. "|" .. a .. "|" .. b .. "|" .. target)
end
-- A waiting job becomes a job hash with its first target at the head of its targets list (a done
-- one only when its result is gone: it is to be done again). Returns the entry it was (nil: none);
-- a cancelled one, or a done one with its result, is left in place.
local function own_job(jk, jkey, tkey)
  if redis.call("EXISTS", jkey) == 1 then return nil end
  local w = waiting_entry(jk)
  if not w or w.kind == "x" then return w end
  if w.kind == "d" then
    if redis.call("EXISTS", K.result(jk)) == 1 then return w end
    local endpoint, handbacks, reroutes = string.match(w.target .. "||", "^([^|]*)|([^|]*)|([^|]*)")
    redis.call("HSET", jkey, "state", "done", "attempts", w.a, "crashes", w.b, "endpoint", endpoint,
               "handbacks", handbacks ~= "" and handbacks or 0, "reroutes", reroutes ~= "" and reroutes or 0)
    redis.call("HDEL", w.key, w.field)
    return w
  end
  if w.kind == "c" then
    redis.call("HSET", jkey, "state", "claimed", "owner", w.a, "claim_deadline", w.b)
  else
    redis.call("HSET", jkey, "state", "queued", "queued_at", w.a)
  end
  redis.call("HSET", jkey, "attempts", 0, "crashes", 0, "reroutes", 0, "error_class", "", "reason", "")
  redis.call("LPUSH", tkey, w.target)
  redis.call("HDEL", w.key, w.field)
  return w
end
-- A done job nobody waits for any more: its hash becomes a `d` entry.
local function retire_job(jk, jkey)
  local j = redis.call("HMGET", jkey, "state", "attempts", "crashes", "endpoint", "handbacks", "reroutes")
  if j[1] ~= "done" then return end
  local wkey, wfield = K.waiting(jk)
  local handbacks, reroutes = j[5] or "0", j[6] or "0"
  local tail = (handbacks == "0" and reroutes == "0") and "" or ("|" .. handbacks .. "|" .. reroutes)
  redis.call("HSET", wkey, wfield,
             "d|" .. (j[2] or "0") .. "|" .. (j[3] or "0") .. "|" .. (j[4] or "") .. tail)
  redis.call("DEL", jkey)
end
"""

# Shared Lua: put a job in the delayed set. "force" overwrites the due time and the task spec; else
# an existing entry wins (it will arrive anyway and look again).
_DELAY = r"""
local function delay_job(delayed, specs, jk, due, spec, force)
  local added
  if force then added = redis.call("ZADD", delayed, due, jk)
  else added = redis.call("ZADD", delayed, "NX", due, jk) end
  if force or added == 1 then redis.call("HSET", specs, jk, spec) end
end
local function undelay_job(delayed, specs, jk)
  redis.call("ZREM", delayed, jk)
  redis.call("HDEL", specs, jk)
end
"""

# Shared Lua: an endpoint's in-flight entry (member: job key) is stale once its job no longer
# runs there under a live lease: its consumer was SIGKILLed, or another delivery took the job over.
_INFLIGHT = KEYSPACE + r"""
local function prune_inflight(inflight, endpoint, now)
  for _, jk in ipairs(redis.call("ZRANGE", inflight, 0, -1)) do
    local j = redis.call("HMGET", K.job(jk), "state", "endpoint", "lease_until")
    if j[1] ~= "running" or j[2] ~= endpoint or (tonumber(j[3]) or 0) < now then
      redis.call("ZREM", inflight, jk)
    end
  end
  return redis.call("ZCARD", inflight)
end
"""

# KEYS: prefix. ARGV: now, owner, claim_ttl, then (job_key, target, duration) triples.
# Per item: "claimed" (caller must publish), "attached" (someone else will), "done" (cached result).
# A job that never ran is claimed as a waiting entry (`_WAITING`); one that ran before (failed,
# cancelled while running, or done with its result gone) in its own hash.
CLAIM = KEYSPACE + _WAITING + r"""
local now, owner, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 3 do
  local jk, target = ARGV[i], ARGV[i + 1]
  local jkey, tkey = K.job(jk), K.targets(jk)
  local j = redis.call("HMGET", jkey, "state", "claim_deadline")
  local st, deadline, w = j[1], tonumber(j[2] or 0) or 0, nil
  if not st then
    w = waiting_entry(jk)
    if w then st, deadline = w.state, tonumber(w.b) or 0 end
  end
  if redis.call("EXISTS", K.result(jk)) == 1 and (not st or st == "done") then
    out[#out + 1] = "done"
  else
    local claimable = (not st) or st == "failed" or st == "done" or st == "cancelled"
        or (st == "claimed" and deadline < now)
    local listed = true   -- the target goes into the targets list (not the waiting entry)
    if claimable and j[1] then
      redis.call("HSET", jkey, "state", "claimed", "owner", owner, "claim_deadline", now + ttl,
                 "attempts", 0, "crashes", 0, "reroutes", 0, "error_class", "", "reason", "")
    elseif claimable then
      -- an expired claim keeps its first target; a new or cancelled job starts with this one
      local first = (w and w.kind == "c") and w.target or target
      local wkey, wfield = K.waiting(jk)
      redis.call("HSET", wkey, wfield, "c|" .. owner .. "|" .. (now + ttl) .. "|" .. first)
      listed = first ~= target
    elseif w then
      listed = w.target ~= target
    end
    out[#out + 1] = claimable and "claimed" or "attached"
    if listed and redis.call("LPOS", tkey, target) == false then redis.call("RPUSH", tkey, target) end
  end
end
return out
"""

# KEYS: prefix. ARGV: owner, now, job keys... : claimed -> queued once the task is on the broker
# (queued_at: since when its message waits, for the oldest-queued-age metric).
PUBLISHED = KEYSPACE + _WAITING + r"""
local owner, now = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local jk = ARGV[i]
  local w = waiting_entry(jk)
  if w then
    if w.kind == "c" and w.a == owner then put_waiting(w, "q", now, "", w.target) end
  else
    local jkey = K.job(jk)
    local j = redis.call("HMGET", jkey, "state", "owner")
    if j[1] == "claimed" and j[2] == owner then
      redis.call("HSET", jkey, "state", "queued", "queued_at", now)
      redis.call("HDEL", jkey, "owner", "claim_deadline")
    end
  end
end
return 1
"""

# KEYS: prefix, job hash, its targets list, delayed set, delayed specs hash.
# ARGV: job_key, endpoint, now, delivery_id, lease_ttl, spec (published again if not run),
# max_bounces, bounce_due.
# Returns {verdict, attempts, crashes, reroutes, first_started_at, crashed_endpoint, lease_until,
# targets...}; verdict is the previous state, or "deferred" when a live lease is held by another
# delivery, or "bounced" when the job's last attempt failed on this very endpoint and it goes back
# to the pool (at most max_bounces times per failure) so that another endpoint can take it, or
# "cancelled" when no input wants the job any more (its batches were cancelled): nothing runs;
# "redo" when the job is done but its cached result is gone (`forget_result`): it runs again.
# A job without a hash whose result is cached is "done"; without either it is "missing".
START = _FILES + _DELAY + _WAITING + r"""
local jkey, tkey, delayed, specs = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local jk, endpoint, now, delivery = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ttl, spec, max_bounces, bounce_due = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
local was = own_job(jk, jkey, tkey)
local j = redis.call("HMGET", jkey, "state", "attempts", "crashes", "delivery", "lease_until",
                     "reroutes", "first_started_at", "endpoint", "avoid", "bounces")
local prev = j[1] or "missing"
local function reply(verdict, attempts, crashes, crashed, lease, targets)
  local r = {verdict, tostring(attempts), tostring(crashes), j[6] or "0", j[7] or "", crashed,
             tostring(lease)}
  for _, t in ipairs(targets) do r[#r + 1] = t end
  return r
end
if was and was.kind == "x" then   -- cancelled before it ever started
  undelay_job(delayed, specs, jk)
  return reply("cancelled", "0", "0", "", 0, {})
end
if prev == "missing" and redis.call("EXISTS", K.result(jk)) == 1 then prev = "done" end  -- retired
if prev == "done" and redis.call("EXISTS", K.result(jk)) == 0 then
  -- done, but its cache pointer is gone (forgotten: what it pointed at is gone): work to redo
  prev = "redo"
  redis.call("HSET", jkey, "attempts", 0, "crashes", 0, "reroutes", 0)
  j[2], j[3] = "0", "0"
end
if prev == "done" or prev == "missing" or prev == "failed" then
  return reply(prev, j[2] or "0", j[3] or "0", "", 0, redis.call("LRANGE", tkey, 0, -1))
end
if redis.call("LLEN", tkey) == 0 and (prev ~= "running" or (tonumber(j[5] or 0) or 0) < now) then
  -- cancelled, or waiting (or its delivery died) when every input that wanted it was cancelled
  redis.call("HSET", jkey, "state", "cancelled", "delivery", "", "lease_until", "")
  undelay_job(delayed, specs, jk)
  return reply("cancelled", j[2] or "0", j[3] or "0", "", 0, {})
end
if (prev == "retrying" or prev == "queued") and j[9] == endpoint
    and tonumber(j[10] or 0) < max_bounces then
  redis.call("HINCRBY", jkey, "bounces", 1)
  delay_job(delayed, specs, jk, bounce_due, spec, true)
  return reply("bounced", j[2] or "0", j[3] or "0", "", 0, {})
end
local crashes, crashed = tonumber(j[3] or 0), ""
if prev == "running" and j[4] and j[4] ~= "" and j[4] ~= delivery then
  local lease = tonumber(j[5] or 0) or 0
  if lease > now then   -- alive elsewhere: come back when its lease would have run out
    delay_job(delayed, specs, jk, lease + 1, spec, false)
    return reply("deferred", j[2] or "0", crashes, "", lease, {})
  end
  crashes = crashes + 1   -- its lease ran out: the worker died mid-file
  crashed = j[8] or ""
  redis.call("HSET", jkey, "crashes", crashes)
  if crashed ~= "" then
    redis.call("HINCRBY", K.endpoint_stats(crashed), "failed_crash", 1)
    redis.call("ZREM", K.inflight(crashed), jk)   -- the dead delivery never said it stopped
  end
end
undelay_job(delayed, specs, jk)   -- this delivery is the one that runs; an older delayed copy is moot
local attempts = redis.call("HINCRBY", jkey, "attempts", 1)
redis.call("HSET", jkey, "state", "running", "endpoint", endpoint, "started_at", now,
           "delivery", delivery, "lease_until", now + ttl)
redis.call("HSETNX", jkey, "first_started_at", now)
local targets = job_files(tkey, "running",
  {"endpoint", endpoint, "started_at", now, "attempts", attempts}, now)
return reply(prev, attempts, crashes, crashed, now + ttl, targets)
"""

# KEYS: prefix, job hash, its targets list, delayed set, delayed specs hash.
# ARGV: job_key, delivery_id, new job state (retrying|queued), error_class, reason, now, spend(0|1),
# due, spec. Back to waiting and into the delayed set in one step, only if the job is still held by
# this delivery. Returns the reroute count, or -1 when another delivery holds it, or -2 when no
# input wants it any more (its batches were cancelled while it ran): then it is cancelled instead.
REQUEUE = _FILES + _DELAY + r"""
local jkey, tkey, delayed, specs = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local jk, delivery, st, cls, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, spend, due, spec = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if redis.call("HGET", jkey, "delivery") ~= delivery then return -1 end
if redis.call("LLEN", tkey) == 0 then
  redis.call("HSET", jkey, "state", "cancelled", "delivery", "", "lease_until", "", "finished_at", now)
  undelay_job(delayed, specs, jk)
  return -2
end
local ran_on = redis.call("HGET", jkey, "endpoint") or ""
redis.call("HSET", jkey, "state", st, "error_class", cls, "reason", reason, "delivery", "",
           "lease_until", "", "avoid", ran_on, "bounces", 0)
if ran_on ~= "" then redis.call("HINCRBY", K.endpoint_stats(ran_on), "retries_" .. cls, 1) end
if spend == "0" then
  redis.call("HINCRBY", jkey, "attempts", -1)
  redis.call("HINCRBY", jkey, "reroutes", 1)
end
delay_job(delayed, specs, jk, due, spec, true)
job_files(tkey, st == "queued" and "queued" or "retrying", {"error_class", cls, "reason", reason}, now)
return tonumber(redis.call("HGET", jkey, "reroutes") or 0)
"""

# KEYS: prefix, job hash, its targets list, delayed set, delayed specs hash, kombu's unacked index,
# kombu's unacked hash. ARGV: job_key, delivery_id, now, due, spec, delivery tag ("" = leave the
# message to its consumer, which acks it). A planned stop hands a running job back: queued again,
# the attempt it was on undone, no crash, into the delayed set at `due` — only if `delivery` still
# holds it. With a tag, the delivery's broker message is acked on its dead consumer's behalf (the
# delayed entry replaces it). Returns 1 if handed back, 0 if another delivery holds the job or it
# no longer runs.
HAND_BACK = _FILES + _DELAY + r"""
local jkey, tkey, delayed, specs, index, unacked = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local jk, delivery, now, due, spec, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local j = redis.call("HMGET", jkey, "state", "delivery", "endpoint")
if j[1] ~= "running" or j[2] ~= delivery then return 0 end
local attempts = redis.call("HINCRBY", jkey, "attempts", -1)
redis.call("HINCRBY", jkey, "handbacks", 1)
redis.call("HSET", jkey, "state", "queued", "delivery", "", "lease_until", "")
if j[3] then
  redis.call("ZREM", K.inflight(j[3]), jk)
  redis.call("HINCRBY", K.endpoint_stats(j[3]), "handbacks", 1)
end
delay_job(delayed, specs, jk, due, spec, true)
job_files(tkey, "queued", {"attempts", attempts}, now)
if tag ~= "" then
  redis.call("ZREM", index, tag)
  redis.call("HDEL", unacked, tag)
end
return 1
"""

# KEYS: prefix, job hash, its targets list, its result key, delayed set, delayed specs hash.
# ARGV: job_key, final state (done|failed), error_class, reason, now, ttl, result pointer ("": done
# but not cached: its result store could not be written).
# Returns the job's targets (the inputs to write outputs for). A failed job counts as a failed file
# of its class on the endpoint that ran its last attempt.
FINISH = KEYSPACE + _DELAY + r"""
local jkey, tkey, rkey, delayed, specs = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local jk, st, cls, reason, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local ran_on = redis.call("HGET", jkey, "endpoint")
if st == "failed" and ran_on and ran_on ~= "" and redis.call("HGET", jkey, "state") ~= "failed" then
  redis.call("HINCRBY", K.endpoint_stats(ran_on), "files_failed_" .. cls, 1)
end
redis.call("HSET", jkey, "state", st, "error_class", cls, "reason", reason, "finished_at", now,
           "delivery", "", "lease_until", "")
undelay_job(delayed, specs, jk)
if st == "done" and ARGV[7] ~= "" then
  if ttl > 0 then redis.call("SET", rkey, ARGV[7], "EX", ttl) else redis.call("SET", rkey, ARGV[7]) end
end
return redis.call("LRANGE", tkey, 0, -1)
"""

# KEYS: prefix [, the targets list of the job to detach the input from, the job's hash].
# ARGV: target, new state, now, then field/value pairs. Returns 1 when this completed the batch.
# Detaching the job's last input from a job that is done retires the job's hash (`retire_job`): a
# done job at rest is its cached result and ~60 bytes. (A failed job keeps its hash: why it failed.)
SETTLE = _FILES + _WAITING + r"""
local target, st, now = ARGV[1], ARGV[2], ARGV[3]
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local complete = file_move(target, st, fields, now)
if KEYS[2] then
  redis.call("LREM", KEYS[2], 0, target)
  if KEYS[3] and redis.call("LLEN", KEYS[2]) == 0 then
    retire_job(string.sub(KEYS[3], #KEYS[1] + 6), KEYS[3])   -- KEYS[3] is K.job(jk)
  end
end
return complete
"""

# KEYS: prefix. ARGV: batch_id, now, then (index, info) pairs: files of a failed batch queued
# again (`retry-failed`) with what a new fingerprint says of them (attempts, class and reason
# cleared). Returns how many were failed and are queued now.
REQUEUE_FILES = _FILES + r"""
local bid, now, moved = ARGV[1], ARGV[2], 0
for i = 3, #ARGV, 2 do
  local target = bid .. ":" .. ARGV[i]
  local fkey, slot, sfield = K.file(target)
  local f = file_fields(redis.call("HGET", fkey, sfield))
  if f[1] == "failed" then
    file_move(target, "queued", {"info", ARGV[i + 1], "attempts", "0", "error_class", "", "reason", "",
                                 "finished_at", "", "cached", ""}, now)
    moved = moved + 1
  end
end
return moved
"""

# KEYS: prefix, kombu's unacked index. ARGV: now, lease_until, then (job_key, delivery, tag)
# triples. Extends each lease still held by its delivery and marks each delivery tag as seen now,
# so kombu does not restore it. Returns per item {lease extended 0|1, tag refreshed 0|1}.
EXTEND = KEYSPACE + r"""
local index, now, lease = KEYS[2], ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 3 do
  local jkey = K.job(ARGV[i])
  local ours = redis.call("HGET", jkey, "delivery") == ARGV[i + 1]
  if ours then redis.call("HSET", jkey, "lease_until", lease) end
  local seen = 0
  if ARGV[i + 2] ~= "" then seen = redis.call("ZADD", index, "XX", "CH", now, ARGV[i + 2]) end
  out[#out + 1] = ours and 1 or 0
  out[#out + 1] = seen
end
return out
"""

# KEYS: prefix, delayed set, promoting set, delayed specs hash. ARGV: now, promotion deadline,
# limit. Promotions past their deadline (a promoter died mid-way) go back to the delayed set first;
# then up to `limit` due entries move to the promoting set until the deadline.
# Returns {job_key, spec, ...} of the entries taken; each job's queued_at is now (it is published next).
TAKE_DUE = KEYSPACE + r"""
local delayed, promoting, specs = KEYS[2], KEYS[3], KEYS[4]
local now, deadline, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
for _, jk in ipairs(redis.call("ZRANGEBYSCORE", promoting, "-inf", now)) do
  redis.call("ZREM", promoting, jk)
  redis.call("ZADD", delayed, "NX", now, jk)
end
local out = {}
for _, jk in ipairs(redis.call("ZRANGEBYSCORE", delayed, "-inf", now, "LIMIT", 0, limit)) do
  redis.call("ZREM", delayed, jk)
  redis.call("ZADD", promoting, deadline, jk)
  if redis.call("EXISTS", K.job(jk)) == 1 then redis.call("HSET", K.job(jk), "queued_at", now) end
  out[#out + 1] = jk
  out[#out + 1] = redis.call("HGET", specs, jk) or ""
end
return out
"""

# KEYS: prefix, delayed set, promoting set, delayed specs hash. ARGV: promotion deadline, job
# keys... : end this promoter's promotions once published. An entry re-taken by another promoter
# (other deadline) is left alone, and so is the spec of a job that was delayed again meanwhile.
END_PROMOTION = r"""
local delayed, promoting, specs = KEYS[2], KEYS[3], KEYS[4]
local deadline = tonumber(ARGV[1])
for i = 2, #ARGV do
  local jk = ARGV[i]
  if tonumber(redis.call("ZSCORE", promoting, jk) or -1) == deadline then
    redis.call("ZREM", promoting, jk)
  end
  if not redis.call("ZSCORE", delayed, jk) and not redis.call("ZSCORE", promoting, jk) then
    redis.call("HDEL", specs, jk)
  end
end
return 1
"""

# KEYS: prefix, the endpoint's in-flight set, its stats hash. ARGV: now, job_key, endpoint.
# A delivery starts calling the engine: count it in flight (after dropping stale entries, so the
# count is true) and keep the highest count seen. Returns the count.
TRACK_INFLIGHT = _INFLIGHT + r"""
local inflight, stats, now, jk, endpoint = KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2], ARGV[3]
prune_inflight(inflight, endpoint, now)
redis.call("ZADD", inflight, now, jk)
local n = redis.call("ZCARD", inflight)
if n > tonumber(redis.call("HGET", stats, "max_inflight") or 0) then
  redis.call("HSET", stats, "max_inflight", n)
end
return n
"""

# KEYS: prefix. ARGV: now, endpoint names... : drop each endpoint's stale in-flight entries.
PRUNE_INFLIGHT = _INFLIGHT + r"""
local now = tonumber(ARGV[1])
for i = 2, #ARGV do prune_inflight(K.inflight(ARGV[i]), ARGV[i], now) end
return 1
"""

# KEYS: prefix, the endpoint's stats hash. ARGV: now, error class ("" = success), audio seconds,
# threshold, cooldown, max cooldown, endpoint name, busy seconds (the attempt's wall time; busy
# seconds / audio seconds is the endpoint's real-time factor). Counts one attempt's outcome and runs the
# endpoint's one circuit breaker: `threshold` endpoint or transient errors in a row (since the last
# success) open it for `cooldown` seconds, doubling each time it opens again, up to `max cooldown`;
# the count starts again from 0. A success while it has been closed for two cooldowns forgets how
# often it opened. Returns {open until, reason} if this attempt opened the circuit, else {}.
RECORD_ATTEMPT = r"""
local stats, now, cls, endpoint = KEYS[2], tonumber(ARGV[1]), ARGV[2], ARGV[7]
local threshold, cooldown, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local open_until = tonumber(redis.call("HGET", stats, "circuit_open_until") or 0) or 0
if cls == "" then
  redis.call("HINCRBY", stats, "done", 1)
  redis.call("HINCRBYFLOAT", stats, "audio_seconds", ARGV[3])
  redis.call("HINCRBYFLOAT", stats, "busy_seconds", ARGV[8] or 0)
  redis.call("HSET", stats, "consecutive_failures", 0)
  if now > open_until + 2 * cooldown then redis.call("HDEL", stats, "circuit_opens") end
  return {}
end
redis.call("HINCRBY", stats, "failed_" .. cls, 1)
if cls ~= "endpoint" and cls ~= "transient" then return {} end
local failures = redis.call("HINCRBY", stats, "consecutive_failures", 1)
if failures < threshold or now < open_until then return {} end
local opens = redis.call("HINCRBY", stats, "circuit_opens", 1)
local until_text = string.format("%.3f", now + math.min(cap, cooldown * 2 ^ (opens - 1)))
local reason = failures .. " files in a row failed on endpoint '" .. endpoint .. "'"
redis.call("HSET", stats, "circuit_open_until", until_text, "circuit_reason", reason,
           "consecutive_failures", 0)
return {until_text, reason}
"""

# KEYS: prefix, the endpoint-set hash. ARGV: yaml, source, now. Publishes a new version unless
# the text is the same as the current one. Returns the version.
PUBLISH_ENDPOINTS = r"""
local key = KEYS[2]
local cur = redis.call("HMGET", key, "yaml", "version")
if cur[1] == ARGV[1] then return tonumber(cur[2] or 0) end
local v = redis.call("HINCRBY", key, "version", 1)
redis.call("HSET", key, "yaml", ARGV[1], "source", ARGV[2], "applied_at", ARGV[3])
return v
"""

# KEYS: prefix, an endpoint's owner key. ARGV: holder, ttl_ms, take_free (0|1). Renews the key
# if `holder` owns it; takes it if it is free and take_free is 1. Returns 1 if `holder` owns it now.
HOLD_ENDPOINT = r"""
local cur = redis.call("GET", KEYS[2])
if cur == ARGV[1] then redis.call("PEXPIRE", KEYS[2], ARGV[2]) return 1 end
if (not cur) and ARGV[3] == "1" then redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2]) return 1 end
return 0
"""

# KEYS: prefix, a key with a holder (an endpoint's owner key, a summary lock). ARGV: holder.
# Deletes the key only if `holder` holds it.
RELEASE_ENDPOINT = r"""
if redis.call("GET", KEYS[2]) == ARGV[1] then return redis.call("DEL", KEYS[2]) end
return 0
"""

# KEYS: prefix. ARGV: batch_id, then (output digest, input tag) pairs; digests are 16 bytes, tags
# 8. A reservation (in the digest's `K.outputs` hash) is the input tag followed by the batch id.
# All or nothing: if a batch that is still running (done + failed + cancelled < total) holds an
# output for another input, or this batch holds it for another of its inputs (two inputs of one
# batch would share an output), nothing is written and the reply lists {position (1-based), other
# batch, ...} of each clash; else every output is reserved, reply {}. The same input submitted
# again (a re-run after Ctrl-C) takes its output over; a reservation of a finished or vanished
# batch is stale and taken over too.
RESERVE_OUTPUTS = KEYSPACE + r"""
local bid = ARGV[1]
local live = {}
local function running(other)
  if live[other] == nil then
    local b = redis.call("HMGET", K.batch(other), "total", "n_done", "n_failed", "n_cancelled")
    local settled = tonumber(b[2] or 0) + tonumber(b[3] or 0) + tonumber(b[4] or 0)
    live[other] = (b[1] and settled < tonumber(b[1])) or false
  end
  return live[other]
end
local clashes, position, mine = {}, 0, {}
for i = 2, #ARGV, 2 do
  position = position + 1
  local held = mine[ARGV[i]] or redis.call("HGET", K.outputs(ARGV[i]), ARGV[i])
  if held and string.sub(held, 1, 8) ~= ARGV[i + 1] then
    local other = string.sub(held, 9)
    if other == bid or running(other) then
      clashes[#clashes + 1] = tostring(position)
      clashes[#clashes + 1] = other
    end
  end
  mine[ARGV[i]] = ARGV[i + 1] .. bid
end
if #clashes > 0 then return clashes end
for i = 2, #ARGV, 2 do redis.call("HSET", K.outputs(ARGV[i]), ARGV[i], ARGV[i + 1] .. bid) end
return clashes
"""

# KEYS: prefix. ARGV: batch_id, then output digests: drop the reservations this batch still holds.
RELEASE_OUTPUTS = KEYSPACE + r"""
for i = 2, #ARGV do
  local hkey = K.outputs(ARGV[i])
  local held = redis.call("HGET", hkey, ARGV[i])
  if held and string.sub(held, 9) == ARGV[1] then redis.call("HDEL", hkey, ARGV[i]) end
end
return 1
"""

# KEYS: prefix, the batch hash, delayed set, delayed specs hash. ARGV: batch_id, now, file indexes...
# Cancel (part of) a batch: the first call marks it (cancelled_at); each listed file that has not
# finished becomes cancelled and leaves its job's targets. A job no input wants any more that is
# waiting (claimed, queued, retrying) is cancelled and leaves the delayed set: a delivery of it
# still on the broker finds it cancelled and is dropped without an engine call (START). A running
# one runs to its end for nobody: its transcript is cached, no output is written (REQUEUE cancels
# it if it fails). A job another batch still wants is left alone. A batch that had finished before
# its first call is left as it was. Returns {verdict, completed 0|1, files cancelled, jobs cancelled};
# verdict "finished" (nothing done) or "cancelled".
CANCEL = _FILES + _DELAY + _WAITING + r"""
local bkey, delayed, specs = KEYS[2], KEYS[3], KEYS[4]
local bid, now = ARGV[1], ARGV[2]
local b = redis.call("HMGET", bkey, "total", "n_done", "n_failed", "n_cancelled", "cancelled_at")
if not b[1] then return {"missing", 0, 0, 0} end
if (not b[5] or b[5] == "")
    and tonumber(b[2] or 0) + tonumber(b[3] or 0) + tonumber(b[4] or 0) >= tonumber(b[1]) then
  return {"finished", 0, 0, 0}
end
redis.call("HSETNX", bkey, "cancelled_at", now)
local completed, files, jobs = 0, 0, 0
local options_key = redis.call("HGET", bkey, "options_key")
for i = 3, #ARGV do
  local target = bid .. ":" .. ARGV[i]
  local fkey, slot, sfield = K.file(target)
  local info = redis.call("HGET", fkey, slot)
  local st = info and file_fields(redis.call("HGET", fkey, sfield))[1]
  if st == "queued" or st == "running" or st == "retrying" then
    completed = math.max(completed, file_move(target, "cancelled", {"finished_at", now}, now))
    files = files + 1
    local jk = info_job(info, options_key)
    if jk ~= "" then
      local tkey, jkey = K.targets(jk), K.job(jk)
      redis.call("LREM", tkey, 0, target)
      local w = redis.call("EXISTS", jkey) == 0 and waiting_entry(jk)
      if w then
        if w.target == target and w.kind ~= "x" then   -- its first target goes: the next one takes its place
          local nxt = redis.call("LPOP", tkey)
          if nxt then
            put_waiting(w, w.kind, w.a, w.b, nxt)
          else
            put_waiting(w, "x", now, "", target)
            undelay_job(delayed, specs, jk)
            jobs = jobs + 1
          end
        end
      else
        local js = redis.call("HGET", jkey, "state")
        if redis.call("LLEN", tkey) == 0 and (js == "claimed" or js == "queued" or js == "retrying") then
          redis.call("HSET", jkey, "state", "cancelled", "finished_at", now)
          undelay_job(delayed, specs, jk)
          jobs = jobs + 1
        end
      end
    end
  end
end
return {"cancelled", completed, files, jobs}
"""

# KEYS: prefix, a batch's summary clock. ARGV: what the batch counts now (its signature), now,
# min_gap, period, factor, most (seconds), ttl (ms). The clock's value is "signature|written_at|cost".
# The caller's turn to rewrite the summary (returns 1, and sets the clock to now so that no other
# process starts the same rewrite) when there is no clock, or the last rewrite is older than
# min(most, max(period, factor × cost)), or the counts changed and it is older than
# min(most, max(min_gap, factor × cost)); else 0.
SUMMARY_TURN = r"""
local v = redis.call("GET", KEYS[2])
local now, factor, most = tonumber(ARGV[2]), tonumber(ARGV[5]), tonumber(ARGV[6])
local cost = 0
if v then
  local sig, at, spent = string.match(v, "^(.*)|([^|]*)|([^|]*)$")
  cost = tonumber(spent) or 0
  local age = now - (tonumber(at) or 0)
  local gap = math.min(most, math.max(tonumber(ARGV[4]), factor * cost))
  if sig ~= ARGV[1] then gap = math.min(most, math.max(tonumber(ARGV[3]), factor * cost)) end
  if age < gap then return 0 end
end
redis.call("SET", KEYS[2], ARGV[1] .. "|" .. ARGV[2] .. "|" .. cost, "PX", ARGV[7])
return 1
"""

# KEYS: prefix. ARGV: 16-byte fingerprint digests (of "path|size|version"). Returns the cached
# value of each (32 bytes of sha256 + duration) or false. In `K.fingerprints(digest)`.
FINGERPRINTS = KEYSPACE + r"""
local out = {}
for i = 1, #ARGV do out[i] = redis.call("HGET", K.fingerprints(ARGV[i]), ARGV[i]) end
return out
"""

# KEYS: prefix. ARGV: (digest, value) pairs: remember each fingerprint.
REMEMBER_FINGERPRINTS = KEYSPACE + r"""
for i = 1, #ARGV, 2 do redis.call("HSET", K.fingerprints(ARGV[i]), ARGV[i], ARGV[i + 1]) end
return 1
"""

# Every script the store registers, by name.
SCRIPTS = {
    "claim": CLAIM, "published": PUBLISHED, "start": START, "requeue": REQUEUE, "finish": FINISH,
    "settle": SETTLE, "extend": EXTEND, "take_due": TAKE_DUE, "end_promotion": END_PROMOTION,
    "track_inflight": TRACK_INFLIGHT, "prune_inflight": PRUNE_INFLIGHT,
    "publish_endpoints": PUBLISH_ENDPOINTS, "hold_endpoint": HOLD_ENDPOINT,
    "release_endpoint": RELEASE_ENDPOINT, "reserve_outputs": RESERVE_OUTPUTS,
    "summary_turn": SUMMARY_TURN, "release_held": RELEASE_ENDPOINT,
    "release_outputs": RELEASE_OUTPUTS,
    "cancel": CANCEL, "requeue_files": REQUEUE_FILES,
    "fingerprints": FINGERPRINTS, "remember_fingerprints": REMEMBER_FINGERPRINTS,
    "hand_back": HAND_BACK, "record_attempt": RECORD_ATTEMPT,
}
