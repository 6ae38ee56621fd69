"""Redis backend: the store shared by several replicas or API processes.

Every read-modify-write is one Lua script, so it is atomic on the server whatever other
processes do at the same time (owner finishing, a cancel, a sweeper); the scripts build key
names from the prefix and the ids they read, so this needs a standalone Redis (or one
primary), not Redis Cluster.

Key layout (``P`` is the prefix; ids are the API's ids):

========================== ===================================================================
``P r:{id}``               hash: ``data`` (the Response JSON), ``running`` (1/0), ``owner``,
                           ``prev``, ``conv``, ``bg``, ``tenant`` (``""``: shared);
                           ``in_ids``/``out_ids``: JSON lists of
                           the item ids it put in the item index; ``in_b``/``out_b``/``ev_b``:
                           bytes of its input items, output items, events
``P r:{id}:in``/``:out``   lists: its input items, its output items (JSON), in order
``P r:{id}:ev``            stream: background events; entry id ``0-{sequence_number + 1}``, so
                           "after N" is the stream id ``0-{N + 1}``
``P responses``            zset: response id by ``created_at`` (retention)
``P running``              hash: running response id → owner (``""`` for none)
``P cancel``               set: response ids someone asked to cancel
``P items``                hash: server-made item id → ``"{i|o}{position} {response id}"``,
                           where the item lives; the first writer of an id keeps the entry
``P bytes``                hash: ``r:{id}``/``c:{id}`` → bytes the record takes (retention)
``P tenants``              hash: ``c:{id}`` → the tenant that made the conversation (none: shared)
``P owner:{name}``         string with a TTL: the owner is alive while it exists
``P c:{id}``               string: the Conversation JSON
``P c:{id}:order``         zset: item id by insertion counter (order survives replacement)
``P c:{id}:items``         hash: item id → item JSON
``P conversations``        zset: conversation id by last change (retention)
``P seq``                  counter behind the insertion order of conversation items
========================== ===================================================================

Nothing carries a TTL but owners: retention is :meth:`RedisStore.prune`, which also removes
the index entries (``items``, ``running``, ``cancel``) a TTL could not, so memory stays
bounded by :class:`Retention`.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

from .base import (
    JSON,
    RUNNING_STATUSES,
    ItemPage,
    Order,
    Retention,
    Store,
    StoredConversation,
    StoredResponse,
    StoreUnavailable,
    page_of,
)

# Shared by the scripts: key names and the deletion of a response with all it owns.
_LUA_COMMON = """
local p = ARGV[1]
local function rkey(rid) return p .. 'r:' .. rid end

local function unindex(rid, ids_json)
  if not ids_json then return end
  for _, id in ipairs(cjson.decode(ids_json)) do
    local ptr = redis.call('HGET', p .. 'items', id)
    if ptr and string.sub(ptr, string.find(ptr, ' ', 1, true) + 1) == rid then
      redis.call('HDEL', p .. 'items', id)
    end
  end
end

local function index(rid, kind, first)
  for i = first, #ARGV do
    local id = ARGV[i]
    if id ~= '' then redis.call('HSETNX', p .. 'items', id, kind .. (i - first) .. ' ' .. rid) end
  end
end

local function span(first, last)
  local n = 0
  for i = first, last do n = n + string.len(ARGV[i]) end
  return n
end

local function resize(rid)
  local key = rkey(rid)
  local b = redis.call('HMGET', key, 'in_b', 'out_b', 'ev_b')
  local n = redis.call('HSTRLEN', key, 'data') + (tonumber(b[1]) or 0) + (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0)
  redis.call('HSET', p .. 'bytes', 'r:' .. rid, n)
end

local function push(key, first, last)
  for i = first, last, 1000 do
    redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 999, last)))
  end
end

local function delete_response(rid)
  local key = rkey(rid)
  local ids = redis.call('HMGET', key, 'in_ids', 'out_ids')
  unindex(rid, ids[1])
  unindex(rid, ids[2])
  redis.call('ZREM', p .. 'responses', rid)
  redis.call('HDEL', p .. 'running', rid)
  redis.call('SREM', p .. 'cancel', rid)
  redis.call('DEL', key .. ':in', key .. ':out', key .. ':ev')
  redis.call('HDEL', p .. 'bytes', 'r:' .. rid)
  return redis.call('DEL', key)
end
"""

# ARGV: prefix, id, data, running, owner, prev, conv, bg, created, in_ids, tenant, n, n input
# items, then the n input items' ids ('' for none), in the same order.
_CREATE_RESPONSE = (
    _LUA_COMMON
    + """
local rid = ARGV[2]
local key = rkey(rid)
delete_response(rid)
redis.call('HSET', key, 'data', ARGV[3], 'running', ARGV[4], 'owner', ARGV[5], 'prev', ARGV[6],
  'conv', ARGV[7], 'bg', ARGV[8], 'in_ids', ARGV[10], 'out_ids', '[]', 'tenant', ARGV[11])
redis.call('ZADD', p .. 'responses', ARGV[9], rid)
if ARGV[4] == '1' then redis.call('HSET', p .. 'running', rid, ARGV[5]) end
local n = tonumber(ARGV[12])
push(key .. ':in', 13, 12 + n)
index(rid, 'i', 13 + n)
redis.call('HSET', key, 'in_b', span(13, 12 + n))
resize(rid)
"""
)

# ARGV: prefix, id, data, running, out_ids, n, n output items, then their ids.
_FINISH_RESPONSE = (
    _LUA_COMMON
    + """
local rid = ARGV[2]
local key = rkey(rid)
if redis.call('HGET', key, 'running') ~= '1' then return 0 end
unindex(rid, redis.call('HGET', key, 'out_ids'))
redis.call('DEL', key .. ':out')
redis.call('HSET', key, 'data', ARGV[3], 'running', ARGV[4], 'owner', '', 'out_ids', ARGV[5])
if ARGV[4] == '1' then redis.call('HSET', p .. 'running', rid, '') else redis.call('HDEL', p .. 'running', rid) end
local n = tonumber(ARGV[6])
push(key .. ':out', 7, 6 + n)
index(rid, 'o', 7 + n)
redis.call('HSET', key, 'out_b', span(7, 6 + n))
resize(rid)
return 1
"""
)

# ARGV: prefix, id, data, running.
_UPDATE_RUNNING = (
    _LUA_COMMON
    + """
local key = rkey(ARGV[2])
if redis.call('HGET', key, 'running') ~= '1' then return 0 end
redis.call('HSET', key, 'data', ARGV[3], 'running', ARGV[4])
if ARGV[4] ~= '1' then redis.call('HDEL', p .. 'running', ARGV[2]) end
resize(ARGV[2])
return 1
"""
)

# ARGV: prefix, ids...; returns the ids deleted. Running responses are skipped, checked here so
# that a response cannot start running between the check and the deletion.
_DELETE_RESPONSES = (
    _LUA_COMMON
    + """
local only_finished = ARGV[2] == '1'
local deleted = {}
for i = 3, #ARGV do
  local rid = ARGV[i]
  if not (only_finished and redis.call('HGET', rkey(rid), 'running') == '1') then
    if delete_response(rid) == 1 then deleted[#deleted + 1] = rid end
  end
end
return deleted
"""
)

# ARGV: prefix, tenant ('' for none), item ids...; returns their JSON (false where unknown or
# not visible to the tenant: base.visible), in the same order.
_GET_ITEMS = (
    _LUA_COMMON
    + """
local tenant = ARGV[2]
local out = {}
for i = 3, #ARGV do
  local ptr = redis.call('HGET', p .. 'items', ARGV[i])
  local item = false
  if ptr then
    local space = string.find(ptr, ' ', 1, true)
    local key = rkey(string.sub(ptr, space + 1))
    local owner = redis.call('HGET', key, 'tenant')
    if tenant == '' or not owner or owner == '' or owner == tenant then
      local list = string.sub(ptr, 1, 1) == 'i' and ':in' or ':out'
      item = redis.call('LINDEX', key .. list, tonumber(string.sub(ptr, 2, space - 1)))
    end
  end
  out[#out + 1] = item
end
return out
"""
)

# ARGV: prefix, id, (sequence number, event JSON)...; numbers at or below the last stored one
# are skipped (a retried append), and so is a response that is gone (deleted or pruned while
# its owner still runs), whose stream nothing would delete again.
_APPEND_EVENTS = (
    _LUA_COMMON
    + """
local key = rkey(ARGV[2])
if redis.call('EXISTS', key) == 0 then return 0 end
local stream = key .. ':ev'
local last = -1
local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if top[1] then last = tonumber(string.sub(top[1][1], 3)) - 1 end
for i = 3, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', stream, string.format('0-%d', seq + 1), 'e', ARGV[i + 1])
    redis.call('HINCRBY', key, 'ev_b', string.len(ARGV[i + 1]))
    last = seq
  end
end
resize(ARGV[2])
return 1
"""
)

# ARGV: prefix, id.
_REQUEST_CANCEL = (
    _LUA_COMMON
    + """
if redis.call('EXISTS', rkey(ARGV[2])) == 1 then redis.call('SADD', p .. 'cancel', ARGV[2]) end
"""
)

# Conversation scripts share the append: an id already in the order keeps its place.
_LUA_CONVERSATION = """
local p = ARGV[1]
local key = p .. 'c:' .. ARGV[2]
local function add_items(first)
  local grown = 0
  for i = first, #ARGV, 2 do
    local id = ARGV[i]
    if not redis.call('ZSCORE', key .. ':order', id) then
      redis.call('ZADD', key .. ':order', redis.call('INCR', p .. 'seq'), id)
    end
    grown = grown + string.len(ARGV[i + 1]) - redis.call('HSTRLEN', key .. ':items', id)
    redis.call('HSET', key .. ':items', id, ARGV[i + 1])
  end
  redis.call('HINCRBY', p .. 'bytes', 'c:' .. ARGV[2], grown)
end
"""

# ARGV: prefix, id, conversation JSON, now, tenant ('' for none), (item id, item JSON)...
_CREATE_CONVERSATION = (
    _LUA_CONVERSATION
    + """
redis.call('DEL', key .. ':order', key .. ':items')
redis.call('SET', key, ARGV[3])
redis.call('ZADD', p .. 'conversations', ARGV[4], ARGV[2])
redis.call('HSET', p .. 'bytes', 'c:' .. ARGV[2], string.len(ARGV[3]))
if ARGV[5] == '' then redis.call('HDEL', p .. 'tenants', 'c:' .. ARGV[2])
else redis.call('HSET', p .. 'tenants', 'c:' .. ARGV[2], ARGV[5]) end
add_items(6)
"""
)

# ARGV: prefix, id, conversation JSON, now; its bytes follow the new object's length.
_UPDATE_CONVERSATION = (
    _LUA_CONVERSATION
    + """
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HINCRBY', p .. 'bytes', 'c:' .. ARGV[2], string.len(ARGV[3]) - redis.call('STRLEN', key))
redis.call('SET', key, ARGV[3])
redis.call('ZADD', p .. 'conversations', ARGV[4], ARGV[2])
return 1
"""
)

# ARGV: prefix, id, now, (item id, item JSON)...
_ADD_ITEMS = (
    _LUA_CONVERSATION
    + """
if redis.call('EXISTS', key) == 0 then return 0 end
add_items(4)
redis.call('ZADD', p .. 'conversations', ARGV[3], ARGV[2])
return 1
"""
)

# ARGV: prefix, id, item id, now.
_DELETE_ITEM = (
    _LUA_CONVERSATION
    + """
if redis.call('ZREM', key .. ':order', ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', p .. 'bytes', 'c:' .. ARGV[2], -redis.call('HSTRLEN', key .. ':items', ARGV[3]))
redis.call('HDEL', key .. ':items', ARGV[3])
redis.call('ZADD', p .. 'conversations', 'XX', ARGV[4], ARGV[2])
return 1
"""
)

# ARGV: prefix, id, after ('' for none), limit (-1 for all; the script reads one more),
# '1' for descending. Returns false for a missing conversation, else the items' JSON.
_LIST_ITEMS = (
    _LUA_CONVERSATION
    + """
if redis.call('EXISTS', key) == 0 then return false end
local order = key .. ':order'
local desc = ARGV[5] == '1'
local start = 0
if ARGV[3] ~= '' then
  local rank
  if desc then rank = redis.call('ZREVRANK', order, ARGV[3]) else rank = redis.call('ZRANK', order, ARGV[3]) end
  if not rank then return {} end
  start = rank + 1
end
local limit = tonumber(ARGV[4])
local stop = -1
if limit >= 0 then stop = start + limit end
local ids
if desc then ids = redis.call('ZREVRANGE', order, start, stop) else ids = redis.call('ZRANGE', order, start, stop) end
local out = {}
for i, id in ipairs(ids) do out[i] = redis.call('HGET', key .. ':items', id) end
return out
"""
)

# ARGV: prefix, ids...; returns how many existed.
_DELETE_CONVERSATIONS = """
local p = ARGV[1]
local deleted = 0
for i = 2, #ARGV do
  local key = p .. 'c:' .. ARGV[i]
  redis.call('ZREM', p .. 'conversations', ARGV[i])
  redis.call('DEL', key .. ':order', key .. ':items')
  redis.call('HDEL', p .. 'bytes', 'c:' .. ARGV[i])
  redis.call('HDEL', p .. 'tenants', 'c:' .. ARGV[i])
  deleted = deleted + redis.call('DEL', key)
end
return deleted
"""

_CHUNK = 500  # ids per prune script call: each call blocks the server while it runs

# Server replies that mean "cannot serve now" rather than "bad command".
_UNAVAILABLE_REPLIES = ("MISCONF", "MASTERDOWN", "NOREPLICAS")


class RedisStore(Store):
    """The store in one Redis database, safe for any number of processes at once."""

    backend = "redis"

    def __init__(self, url: str, retention: Retention = Retention(), prefix: str = "vllm-responses:") -> None:
        super().__init__(retention)
        self.prefix = prefix
        # No retries inside the client: a retried write whose first attempt did land would
        # misreport (a second finish_response answers False). A failed call raises
        # StoreUnavailable; the pool reconnects on the next call by itself.
        self._redis = aioredis.Redis.from_url(
            url, decode_responses=True, retry=Retry(NoBackoff(), 0), socket_timeout=10, socket_connect_timeout=5
        )
        timeout = self._redis.connection_pool.connection_kwargs.get("socket_timeout")
        # A blocking XREAD must answer before the socket times out.
        self._block_s = min(5.0, timeout / 2) if timeout else 5.0
        script = self._redis.register_script
        self._create_response = script(_CREATE_RESPONSE)
        self._finish_response = script(_FINISH_RESPONSE)
        self._update_running = script(_UPDATE_RUNNING)
        self._delete_responses = script(_DELETE_RESPONSES)
        self._get_items = script(_GET_ITEMS)
        self._append_events = script(_APPEND_EVENTS)
        self._request_cancel = script(_REQUEST_CANCEL)
        self._create_conversation = script(_CREATE_CONVERSATION)
        self._add_items = script(_ADD_ITEMS)
        self._update_conversation = script(_UPDATE_CONVERSATION)
        self._delete_item = script(_DELETE_ITEM)
        self._list_items = script(_LIST_ITEMS)
        self._delete_conversations = script(_DELETE_CONVERSATIONS)
        self._closed = False

    def _response_key(self, response_id: str) -> str:
        return f"{self.prefix}r:{response_id}"

    def _conversation_key(self, conversation_id: str) -> str:
        return f"{self.prefix}c:{conversation_id}"

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._redis.aclose()

    # -- responses ------------------------------------------------------------------------
    async def create_response(self, record: StoredResponse) -> None:
        inputs = record.input_items or []
        ids = [_item_id(item, record.client_ids) for item in inputs]
        args = [
            self.prefix,
            record.id,
            orjson.dumps(record.response),
            _running(record.response),
            record.owner or "",
            record.previous_response_id or "",
            record.conversation_id or "",
            int(record.background),
            repr(record.created_at),
            orjson.dumps([i for i in ids if i]),
            record.tenant or "",
            len(inputs),
            *map(orjson.dumps, inputs),
            *ids,
        ]
        with _unavailable():
            await self._create_response(args=args)

    async def finish_response(self, response: JSON) -> bool:
        outputs = response.get("output") or []
        ids = [_item_id(item) for item in outputs]
        args = [
            self.prefix,
            response["id"],
            orjson.dumps(response),
            _running(response),
            orjson.dumps([i for i in ids if i]),
            len(outputs),
            *map(orjson.dumps, outputs),
            *ids,
        ]
        with _unavailable():
            return bool(await self._finish_response(args=args))

    async def update_running_response(self, response: JSON) -> bool:
        args = [self.prefix, response["id"], orjson.dumps(response), _running(response)]
        with _unavailable():
            return bool(await self._update_running(args=args))

    async def get_response(self, response_id: str, *, with_input: bool = False) -> StoredResponse | None:
        key = self._response_key(response_id)
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:  # one snapshot: MULTI/EXEC
                pipe.hmget(key, "data", "prev", "conv", "bg", "owner", "tenant")
                if with_input:
                    pipe.lrange(f"{key}:in", 0, -1)
                replies = await pipe.execute()
        data, previous, conversation, background, owner, tenant = replies[0]
        if data is None:
            return None
        inputs = [orjson.loads(item) for item in replies[1]] if with_input else None
        size = len(data.encode()) + (sum(len(item.encode()) for item in replies[1]) if with_input else 0)
        return StoredResponse(
            orjson.loads(data),
            inputs,
            previous or None,
            conversation or None,
            background == "1",
            owner or None,
            size=size,
            tenant=tenant or None,
        )

    async def delete_response(self, response_id: str) -> bool:
        with _unavailable():
            return bool(await self._delete_responses(args=[self.prefix, "0", response_id]))

    async def get_items(self, item_ids: list[str], tenant: str | None = None) -> dict[str, JSON]:
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        with _unavailable():
            found = await self._get_items(args=[self.prefix, tenant or "", *ids])
        return {item_id: orjson.loads(item) for item_id, item in zip(ids, found) if item is not None}

    # -- background events and cancellation -----------------------------------------------
    async def append_events(self, response_id: str, events: list[tuple[int, str]]) -> None:
        if not events:
            return
        args: list[Any] = [self.prefix, response_id]
        for seq, data in events:
            args += [seq, data]
        with _unavailable():
            await self._append_events(args=args)

    async def read_events(self, response_id: str, after: int = -1, limit: int | None = None) -> list[tuple[int, str]]:
        if limit is not None and limit <= 0:
            return []
        key = f"{self._response_key(response_id)}:ev"
        with _unavailable():
            entries = await self._redis.xrange(key, f"0-{after + 2}", "+", count=limit)
        return _events(entries)

    async def wait_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, str]]:
        """One blocking ``XREAD``: the server answers the moment any process appends."""
        key = f"{self._response_key(response_id)}:ev"
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            block_ms = max(1, int(min(remaining, self._block_s) * 1000))
            with _unavailable():
                reply = await self._redis.xread({key: f"0-{after + 1}"}, block=block_ms)
            if reply:
                return _events(reply[0][1])
        return await self.read_events(response_id, after)

    async def request_cancel(self, response_id: str) -> None:
        with _unavailable():
            await self._request_cancel(args=[self.prefix, response_id])

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        ids = list(dict.fromkeys(response_ids))
        if not ids:
            return set()
        with _unavailable():
            flags = await self._redis.smismember(f"{self.prefix}cancel", ids)
        return {rid for rid, flag in zip(ids, flags) if flag}

    # -- owners -----------------------------------------------------------------------------
    async def heartbeat(self, owner: str, ttl: float) -> None:
        with _unavailable():
            await self._redis.set(f"{self.prefix}owner:{owner}", "1", px=max(1, int(ttl * 1000)))

    async def alive(self, owner: str) -> bool:
        with _unavailable():
            return bool(await self._redis.exists(f"{self.prefix}owner:{owner}"))

    async def running_responses(self) -> list[tuple[str, str | None]]:
        with _unavailable():
            running = await self._redis.hgetall(f"{self.prefix}running")
        return [(rid, owner or None) for rid, owner in running.items()]

    async def count_responses(self) -> int:
        with _unavailable():
            return await self._redis.zcard(f"{self.prefix}responses")

    # -- conversations --------------------------------------------------------------------
    async def create_conversation(self, conversation: JSON, items: list[JSON], tenant: str | None = None) -> None:
        args = [
            self.prefix,
            conversation["id"],
            orjson.dumps(conversation),
            repr(time.time()),
            tenant or "",
            *_pairs(items),
        ]
        with _unavailable():
            await self._create_conversation(args=args)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:  # one snapshot: MULTI/EXEC
                pipe.get(self._conversation_key(conversation_id))
                pipe.hget(f"{self.prefix}bytes", f"c:{conversation_id}")
                pipe.hget(f"{self.prefix}tenants", f"c:{conversation_id}")
                data, size, tenant = await pipe.execute()
        return None if data is None else StoredConversation(orjson.loads(data), int(size or 0), tenant or None)

    async def update_conversation(self, conversation: JSON) -> bool:
        args = [self.prefix, conversation["id"], orjson.dumps(conversation), repr(time.time())]
        with _unavailable():
            return bool(await self._update_conversation(args=args))

    async def delete_conversation(self, conversation_id: str) -> bool:
        with _unavailable():
            return bool(await self._delete_conversations(args=[self.prefix, conversation_id]))

    async def add_conversation_items(self, conversation_id: str, items: list[JSON]) -> bool:
        args = [self.prefix, conversation_id, repr(time.time()), *_pairs(items)]
        with _unavailable():
            return bool(await self._add_items(args=args))

    async def list_conversation_items(
        self, conversation_id: str, *, after: str | None = None, limit: int | None = None, order: Order = "asc"
    ) -> ItemPage | None:
        args = [self.prefix, conversation_id, after or "", -1 if limit is None else limit, int(order == "desc")]
        with _unavailable():
            items = await self._list_items(args=args)
        return None if items is None else page_of([orjson.loads(item) for item in items], limit)

    async def get_conversation_item(self, conversation_id: str, item_id: str) -> JSON | None:
        with _unavailable():
            data = await self._redis.hget(f"{self._conversation_key(conversation_id)}:items", item_id)
        return None if data is None else orjson.loads(data)

    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        with _unavailable():
            return bool(await self._delete_item(args=[self.prefix, conversation_id, item_id, repr(time.time())]))

    # -- upkeep ---------------------------------------------------------------------------
    async def prune(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with _unavailable():
            responses = await self._expired(f"{self.prefix}responses", now, self.retention.max_responses)
            conversations = await self._expired(f"{self.prefix}conversations", now, self.retention.max_conversations)
            if self.retention.max_bytes is not None:
                over_r, over_c = await self._over_budget(self.retention.max_bytes)
                responses = sorted(set(responses) | over_r)
                conversations = sorted(set(conversations) | over_c)
            deleted = 0
            for chunk in _chunks(responses):
                deleted += len(await self._delete_responses(args=[self.prefix, "1", *chunk]))
            for chunk in _chunks(conversations):
                deleted += await self._delete_conversations(args=[self.prefix, *chunk])
        return deleted

    async def _over_budget(self, budget: int) -> tuple[set[str], set[str]]:
        """Responses and conversations past ``budget`` bytes, counted from the newest."""
        sizes = await self._redis.hgetall(f"{self.prefix}bytes")
        if sum(int(n) for n in sizes.values()) <= budget:
            return set(), set()
        newest = [
            (t, "r:" + rid) for rid, t in await self._redis.zrange(f"{self.prefix}responses", 0, -1, withscores=True)
        ]
        newest += [
            (t, "c:" + cid)
            for cid, t in await self._redis.zrange(f"{self.prefix}conversations", 0, -1, withscores=True)
        ]
        newest.sort(reverse=True)
        total, over = 0, (set(), set())
        for _, name in newest:
            total += int(sizes.get(name, 0))
            if total > budget:  # running responses among them are skipped by the delete script
                over[name.startswith("c:")].add(name[2:])
        return over

    async def _expired(self, index: str, now: float, keep: int | None) -> list[str]:
        """Ids in a by-time index older than the max age or beyond the newest ``keep``."""
        ids: set[str] = set()
        if self.retention.max_age_s is not None:
            ids.update(await self._redis.zrangebyscore(index, "-inf", f"({now - self.retention.max_age_s!r}"))
        if keep is not None:
            excess = await self._redis.zcard(index) - keep
            if excess > 0:
                ids.update(await self._redis.zrange(index, 0, excess - 1))
        return sorted(ids)


@contextmanager
def _unavailable() -> Iterator[None]:
    """Redis unreachable, loading, read-only or out of memory: the store cannot serve."""
    try:
        yield
    except (ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError, OutOfMemoryError) as e:
        raise StoreUnavailable(f"Redis: {e}") from e
    except ResponseError as e:
        if str(e).startswith(_UNAVAILABLE_REPLIES):
            raise StoreUnavailable(f"Redis: {e}") from e
        raise


def _running(response: JSON) -> int:
    return int(response["status"] in RUNNING_STATUSES)


def _item_id(item: JSON, private: frozenset[str] = frozenset()) -> str:
    """The id the item index knows it by; ``""`` for an item without one or with an id the
    server did not make (never indexed)."""
    item_id = item.get("id")
    return item_id if isinstance(item_id, str) and item_id not in private else ""


def _pairs(items: list[JSON]) -> list[Any]:
    return [value for item in items for value in (item["id"], orjson.dumps(item))]


def _events(entries: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
    return [(int(entry_id.partition("-")[2]) - 1, fields["e"]) for entry_id, fields in entries]


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
