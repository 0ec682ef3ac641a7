"""Publish many transcribe tasks: Celery messages built from a template, one script call per batch.

`app.send_task` costs ~1 ms per task on the producer (a new redis-py client per publish inside
kombu, `saferepr` of the arguments, a second round trip for the task-sent event), and kombu's own
`producer.batch()` is switched off by the app's `retry_on_timeout` (a replayed pipeline would
publish twice). So the producer writes the messages itself:

* The message is the one `send_task` writes (Celery protocol 2 in kombu's Redis JSON envelope:
  same headers, properties and body; `tests/unit/test_publish.py` compares them key by key and
  `tests/integration/test_publish.py` runs them through a real worker). Only the task id,
  delivery tag, arguments and their reprs change per message.
* Redis keys, the fanout topic of events and the connection parameters come from kombu's Redis
  channel for the app's broker URL (so `rediss://`, `unix://`, passwords and db numbers behave as
  for kombu), but the producer uses its own connection pool **without automatic retries**: a
  pipeline is sent at most once. A failure raises `PublishError` (what was surely published, what
  is uncertain); the caller's claims then stay unpublished, expire and are taken over. Nothing is
  dropped silently, nothing is published twice by a replay.
* The `task-sent` event (`task_send_sent_event`) goes into the same call: one `PUBLISH` on the
  `celeryev` fanout topic per task, the envelope kombu would send, so Flower still sees tasks as
  they are sent. `Publisher(app, sent_events=False)` leaves it out. A batch of tasks is one Lua
  call (`_PUSH`: an `LPUSH` and a `PUBLISH` per task, in order) in a pipeline, not two commands per
  task: packing and parsing those cost the producer more than building the messages.
* Queue bindings are declared as kombu declares them (the two `SADD`s) once per queue per call.

Brokers or options this path does not cover (another transport, Sentinel, `global_keyprefix`,
queues with expiry or a non-direct exchange) fall back to `send_task` in kombu's producer batch.
No `before_task_publish` / `after_task_publish` signals are sent by the fast path (nothing in
batchscribe listens to them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring_ascii as _json_str  # what json.dumps uses
from typing import Any, Literal

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import utcoffset
from kombu.exceptions import KombuError

from batchscribe.common.errors import StateError
from batchscribe.common.queues import TRANSCRIBE_TASK
from batchscribe.common.settings import redact
from batchscribe.common.state import describe

_EMBED: dict[str, Any] = {}  # callbacks, errbacks, chain, chord: none (`celery_app.CompactAMQP`)
_REPR_MAX = 1000  # below Celery's argsrepr/kwargsrepr_maxsize (1024): no truncation to imitate


def new_task_id() -> str:
    """A task id: 80 random bits as 20 hex digits (a task message holds it three times; Celery and
    Flower take any unique string). Delivery tags are 64 random bits: unique among the messages in
    flight, which is where kombu looks them up."""
    return os.urandom(10).hex()


def input_ref(index: int) -> str:
    """A task's first argument when it names the input that published it (`index` of its `batch`)
    instead of the job's 81-character key: the worker reads the key from that input's record
    (`resolve_ref`), and each queued message is ~130 bytes smaller."""
    return f"@{index}"


def is_input_ref(job_key: str) -> bool:
    return job_key.startswith("@")


def message_task(raw: bytes | str) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) of a task message as kombu's Redis transport stores it (its body base64 or
    JSON text, as its envelope says). Raises ValueError, KeyError, TypeError for anything else."""
    envelope = json.loads(raw)
    body: Any = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs = json.loads(body)[:2]
    return list(args), dict(kwargs)


@dataclass(frozen=True)
class TaskSpec:
    """One Celery task = one unique file (job). `path` and `batch` are the input and batch that
    published it (the job may serve others too): what Flower shows and searches by. `job_key` is
    the job's key, or `input_ref` of that input; `options` may leave out what is the default."""

    job_key: str
    options: dict[str, Any]
    path: str
    duration: float
    queue: str
    batch: str = ""
    task: str = TRANSCRIBE_TASK  # or CONVERT_TASK: which Celery task runs it (same arguments)

    def to_json(self) -> str:
        """How a task waits in the delayed set (`common.state` keeps it, the promoter publishes it)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> TaskSpec:
        """Fields a newer version added are left out, so a rolling upgrade can read them."""
        data = json.loads(raw)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class PublishError(StateError):
    """A pipeline of task messages failed: `published` surely went out, `uncertain` may have."""

    def __init__(self, message: str, published: list[str], uncertain: list[str]) -> None:
        super().__init__(message)
        self.published = published
        self.uncertain = uncertain


# ARGV: the number of event topics, the topics, then (queue, message, task-sent event or "") triples:
# each message LPUSHed to its queue (as kombu's Redis transport puts it) and its event PUBLISHed on
# every topic, in order. One call per batch of tasks: a command per task costs the producer more to
# pack and parse than building the message does.
_PUSH = r"""
local topics = tonumber(ARGV[1])
for i = topics + 2, #ARGV, 3 do
  redis.call("LPUSH", ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] ~= "" then
    for t = 2, topics + 1 do redis.call("PUBLISH", ARGV[t], ARGV[i + 2]) end
  end
end
return 1
"""


@dataclass
class _Route:
    """What the fast path needs from kombu's Redis channel, read once per Publisher."""

    client: redis.Redis
    push: Any  # the _PUSH script, registered on `client`
    binding_key: str  # '_kombu.binding.%s'
    binding_permanent_key: str  # '_kombu.binding_permanent.%s'
    sep: str
    event_topics: list[str]
    queues: dict[str, tuple[str, str] | None] = field(default_factory=dict)  # name -> (key, member)


class Publisher:
    """Sends ordinary Celery task messages, pipelined; see the module docstring."""

    def __init__(self, app: Celery, batch_size: int = 1000, sent_events: bool | None = None) -> None:
        self.app = app
        self.batch_size = max(1, batch_size)
        self.sent_events = bool(app.conf.task_send_sent_event) if sent_events is None else sent_events
        self.hostname = anon_nodename()  # what Celery's event dispatcher and `origin` say outside a worker
        self._route: _Route | Literal[False] | None = None  # None: not looked at yet; False: use kombu
        self._lock = threading.Lock()

    # ---- public -----------------------------------------------------------------------------

    def publish(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Publish in the given order (consumers take the first published first); returns task ids.

        Raises `PublishError` if Redis fails on the way; never drops silently.
        """
        if not specs:
            return []
        queues = dict.fromkeys(s.queue for s in specs)
        try:  # kombu connects here, the first time
            route = self._get_route()
            fast = route is not None and all(self._queue_binding(route, q) is not None for q in queues)
        except (redis.RedisError, KombuError) as exc:
            raise PublishError(f"cannot publish tasks: {self._failure(exc)}", [], []) from exc
        if route is None or not fast:
            return self._publish_with_kombu(specs)
        return self._publish_fast(route, specs)

    def close(self) -> None:
        route = self._route
        if isinstance(route, _Route):
            route.client.close()
            route.client.connection_pool.disconnect()
        self._route = None

    # ---- the fast path ------------------------------------------------------------------------

    def _publish_fast(self, route: _Route, specs: Sequence[TaskSpec]) -> list[str]:
        client = route.client
        try:
            _ping(client)  # revive a connection closed while idle (a PING is safe to retry)
        except redis.RedisError as exc:
            raise PublishError(f"cannot publish tasks: {self._failure(exc)}", [], []) from exc
        build = _MessageBuilder(self.app, self.hostname, self.sent_events)
        ids: list[str] = []
        done = 0  # ids[:done] are surely published
        pipe = client.pipeline(transaction=False)
        for queue in dict.fromkeys(s.queue for s in specs):  # declare like kombu, once per queue per call
            key, member = route.queues[queue]  # type: ignore[misc]
            pipe.sadd(route.binding_key % key, member)
            pipe.sadd(route.binding_permanent_key % key, member)
        topics = route.event_topics if self.sent_events else []
        head: list[Any] = [len(topics), *topics]
        args = list(head)
        for spec in specs:
            task_id = new_task_id()
            message, event = build(spec, task_id)
            args += [spec.queue, message, event]
            ids.append(task_id)
            if len(ids) - done >= self.batch_size:
                route.push(args=args, client=pipe)
                self._execute(pipe, ids, done)
                done, args = len(ids), list(head)
        if len(ids) > done or len(pipe):
            if len(ids) > done:
                route.push(args=args, client=pipe)
            self._execute(pipe, ids, done)
        return ids

    def _execute(self, pipe: Any, ids: list[str], done: int) -> None:
        try:
            pipe.execute()
        except Exception as exc:
            pipe.reset()
            raise PublishError(
                f"publishing tasks to Redis failed after {done} of them ({self._failure(exc)}); "
                f"{len(ids) - done} may or may not have been queued",
                ids[:done], ids[done:]) from exc

    def _failure(self, exc: BaseException) -> str:
        """What went wrong, in the state boundary's words when Redis said it."""
        return describe(exc, redact(str(self.app.conf.broker_url))) or f"{type(exc).__name__}: {exc}"

    def _get_route(self) -> _Route | None:
        with self._lock:
            if self._route is None:
                self._route = _connect_route(self.app) or False
            return self._route or None

    def _queue_binding(self, route: _Route, queue: str) -> tuple[str, str] | None:
        """(exchange, binding member) as kombu declares the queue, or None: not for the fast path."""
        if queue not in route.queues:
            declared = self.app.amqp.queues[queue]  # creates it as send_task does (create_missing_queues)
            plain = (declared.exchange is not None and declared.exchange.type == "direct"
                     and not declared.bindings and not declared.expires and not declared.message_ttl
                     and not declared.max_priority and not declared.no_declare)
            route.queues[queue] = ((declared.exchange.name,
                                    route.sep.join([declared.routing_key or "", "", declared.name]))
                                   if plain else None)
        return route.queues[queue]

    # ---- the fallback -----------------------------------------------------------------------

    def _publish_with_kombu(self, specs: Sequence[TaskSpec]) -> list[str]:
        ids: list[str] = []
        try:
            with self.app.producer_or_acquire() as producer, producer.batch(max_size=self.batch_size):
                for spec in specs:
                    task_id = new_task_id()
                    self.app.send_task(
                        spec.task, task_id=task_id, queue=spec.queue, producer=producer,
                        args=[spec.job_key, spec.options],
                        kwargs=task_kwargs(spec),
                    )
                    ids.append(task_id)
        except (redis.RedisError, KombuError) as exc:
            raise PublishError(f"publishing tasks through kombu failed ({self._failure(exc)}); any of them "
                               "may or may not have been queued", [], ids) from exc
        return ids


def _connect_route(app: Celery) -> _Route | None:
    """Kombu's view of the broker (keys, topics, connection parameters), or None to use kombu."""
    from kombu.transport import redis as kombu_redis

    with app.connection_for_write() as conn:
        if type(conn.transport) is not kombu_redis.Transport:  # e.g. Sentinel, or not Redis at all
            return None
        channel = conn.default_channel  # connects (kombu pings) and formats the fanout prefix
        if channel.global_keyprefix:
            return None
        params = dict(channel._connparams())
        for retrying in ("retry_on_timeout", "retry_on_error", "retry"):
            params.pop(retrying, None)  # no retries: a pipeline must never be replayed
        exchange = app.conf.event_exchange
        topics = list(channel._get_publish_topics(exchange, "task.sent"))
        client = redis.Redis(connection_pool=redis.ConnectionPool(**params))
        route = _Route(client=client, push=client.register_script(_PUSH),
                       binding_key=channel.keyprefix_queue,
                       binding_permanent_key=channel.keyprefix_binding_permanent,
                       sep=channel.sep, event_topics=topics)
        if channel._q_for_pri("q", 0) != "q":  # priority 0 must be the plain queue key
            return None
    return route


def _ping(client: redis.Redis) -> None:
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError):
        client.connection_pool.disconnect(inuse_connections=False)
        client.ping()


# ---- messages -----------------------------------------------------------------------------------


class _Template:
    """A JSON document from `json.dumps` with placeholder strings, split once so that filling it in
    is a join: the output is what `json.dumps` gives for the filled-in document (same key order,
    separators and escaping), given each value already as JSON text."""

    _MARK = re.compile(r'"@@([a-z_]+)@@"')

    def __init__(self, document: Any) -> None:
        parts = self._MARK.split(json.dumps(document))
        self.literals = parts[0::2]
        self.names = parts[1::2]

    def fill(self, values: dict[str, str]) -> str:
        literals = self.literals
        out = [literals[0]]
        for name, literal in zip(self.names, literals[1:]):
            out.append(values[name])
            out.append(literal)
        return "".join(out)


def _mark(name: str) -> str:
    return f"@@{name}@@"


_BODY = _Template([[_mark("job_key"), _mark("options")],
                   {"path": _mark("path"), "duration": _mark("duration"), "batch": _mark("batch")}, _EMBED])


def task_kwargs(spec: TaskSpec) -> dict[str, Any]:
    """The task's keyword arguments (what Flower shows in its kwargs column and searches with
    `kwargs:batch=ID`)."""
    return {"path": spec.path, "duration": round(spec.duration, 3), "batch": spec.batch}


class _MessageBuilder:
    """The bytes kombu's Redis transport LPUSHes for `send_task`, and the task-sent event it PUBLISHes.

    Celery builds them with four `json.dumps` of nested dicts per task (body, envelope, event body,
    event envelope); here they are templates from the same dicts, filled in with the values of one
    task (`tests/unit/test_publish.py` checks the result against Celery's own messages).
    """

    def __init__(self, app: Celery, hostname: str, events: bool) -> None:
        self.maxlevels = app.conf.task_repr_maxlevels
        self.clock = app.clock
        self.events = events
        self.pid = os.getpid()
        self.options_cache: dict[int, tuple[Any, str, str | None]] = {}  # id -> (options, JSON, repr tail)
        self.hostname = hostname
        self.event_exchange = app.conf.event_exchange
        # how kombu's channel encodes bodies (the app's transport option; None: JSON text as it is)
        self.body_encoding = (app.conf.broker_transport_options or {}).get("body_encoding", "base64")
        self._templates: dict[str, tuple[_Template, _Template]] = {}  # task name -> (message, event body)
        m = _mark
        self.event = _Template({
            "body": m("body"), "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"hostname": hostname},
            "properties": {"delivery_mode": 1,
                           "delivery_info": {"exchange": self.event_exchange, "routing_key": "task.sent"},
                           "priority": 0, "body_encoding": self.body_encoding, "delivery_tag": m("tag")},
        })

    def _for(self, task: str) -> tuple[_Template, _Template]:
        """The message and task-sent event templates of one task name."""
        found = self._templates.get(task)
        if found is None:
            m, hostname = _mark, self.hostname
            # What `celery_app.CompactAMQP` (headers a worker would assume left out) and kombu's
            # channel make of `send_task`.
            message = _Template({
                "body": m("body"), "content-encoding": "utf-8", "content-type": "application/json",
                "headers": {"task": task, "id": m("id"), "root_id": m("id"),
                            "argsrepr": m("argsrepr"), "kwargsrepr": m("kwargsrepr")},
                "properties": {"correlation_id": m("id"), "delivery_mode": 2,
                               "delivery_info": {"exchange": "", "routing_key": m("queue")}, "priority": 0,
                               "body_encoding": self.body_encoding, "delivery_tag": m("tag")},
            })
            event_body = _Template({
                "hostname": hostname, "utcoffset": m("utcoffset"), "pid": m("pid"), "clock": m("clock"),
                "uuid": m("id"), "root_id": m("id"), "parent_id": None, "name": task,
                "args": m("argsrepr"), "kwargs": m("kwargsrepr"), "retries": 0, "eta": None, "expires": None,
                "queue": m("queue"), "exchange": "", "routing_key": m("queue"), "timestamp": m("timestamp"),
                "type": "task-sent",
            })
            found = self._templates[task] = (message, event_body)
        return found

    def __call__(self, spec: TaskSpec, task_id: str) -> tuple[str, str]:
        options_json, tail = self._options(spec.options)
        duration = round(spec.duration, 3)
        job_key, path = spec.job_key, spec.path
        argsrepr = self._args_repr(job_key, spec.options, tail)
        kwargsrepr = self._kwargs_repr(path, duration, spec.batch)
        body = _BODY.fill({"job_key": _json_str(job_key), "options": options_json, "path": _json_str(path),
                           "duration": json.dumps(duration), "batch": _json_str(spec.batch)})
        values = {"body": self._body(body), "id": _json_str(task_id),
                  "argsrepr": _json_str(argsrepr), "kwargsrepr": _json_str(kwargsrepr),
                  "queue": _json_str(spec.queue), "tag": f'"{os.urandom(8).hex()}"'}
        message_template, event_body = self._for(spec.task)
        message = message_template.fill(values)
        if not self.events:
            return message, ""
        values.update(utcoffset=json.dumps(utcoffset()), pid=str(self.pid), clock=str(self.clock.forward()),
                      timestamp=json.dumps(time.time()))
        values["body"] = self._body(event_body.fill(values))
        values["tag"] = f'"{os.urandom(8).hex()}"'
        return message, self.event.fill(values)

    def _body(self, text: str) -> str:
        """A body as kombu's channel puts it into the envelope (a JSON string)."""
        if self.body_encoding == "base64":
            return '"' + base64.b64encode(text.encode()).decode() + '"'
        return _json_str(text)

    def _options(self, options: dict[str, Any]) -> tuple[str, str | None]:
        """JSON of the options and the end of the args repr, once per options dict in a publish call."""
        entry = self.options_cache.get(id(options))
        if entry is None or entry[0] is not options:
            tail: str | None = repr(options) + "]"
            probe = ["0", options]
            if saferepr(probe, 1024, maxlevels=self.maxlevels) != repr(probe):
                tail = None
            entry = self.options_cache[id(options)] = (options, json.dumps(options), tail)
        return entry[1], entry[2]

    # Celery's saferepr (~60 µs) equals repr() for the common case; it differs for strings holding
    # quotes, backslashes or unprintable characters, and when it truncates. Those take saferepr.

    def _args_repr(self, job_key: str, options: dict[str, Any], tail: str | None) -> str:
        if tail is not None and _plain(job_key):
            fast = f"['{job_key}', {tail}"
            if len(fast) <= _REPR_MAX:
                return fast
        return str(saferepr([job_key, options], 1024, maxlevels=self.maxlevels))

    def _kwargs_repr(self, path: str, duration: float, batch: str) -> str:
        if _plain(path) and _plain(batch):
            fast = f"{{'path': '{path}', 'duration': {duration!r}, 'batch': '{batch}'}}"
            if len(fast) <= _REPR_MAX:
                return fast
        return str(saferepr({"path": path, "duration": duration, "batch": batch}, 1024,
                            maxlevels=self.maxlevels))


def _plain(text: Any) -> bool:
    """A str whose repr is "'" + text + "'" in both repr() and Celery's saferepr."""
    return isinstance(text, str) and text.isprintable() and "'" not in text and "\\" not in text
