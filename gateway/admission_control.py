"""Overload control for the gateway process: bounded work, bounded queue, bounded bodies.

Two parts, kept apart so each can be reasoned about (and rebased) on its own:

* `AdmissionController`, the limiter core (no I/O): at most `max_inflight_checks` checks run at
  once; up to `max_queued_checks` more wait, bounded as well by the bytes of their request bodies
  and by a fair share per requesting user and per agency. Waiting checks are dispatched round
  robin over agencies and, within an agency, over users, so one busy office cannot starve
  another. Anything beyond the bounds is refused at once with `Overloaded` (HTTP 503), and a
  waiting check that gets no slot within `max_queue_wait_s` is refused then. `retry_after_s` is
  estimated from the queue length and the recent service time, and grows while far more clients
  are refused than served (see `_roll_window`), with jitter.
* `AdmissionMiddleware`, the thin ASGI edge: reads request bodies itself with a streaming byte
  limit (413), a read deadline (408: a slow body or a Content-Length larger than what is sent)
  and a process-wide budget of body bytes held at once (503). Supervised routes (POST
  /v1/checks) are refused before the body when the queue is full, and just after it, before any
  other work, when more requests are on their way than could hold a place (`enter`: a burst
  arrives before any of it has taken a slot); they then run under a deadline
  (`request_deadline_s`, or shorter with the caller's `X-Request-Timeout` header) and a
  disconnect watch: when the client goes away or the deadline passes the handler task is
  cancelled, which cancels its gRPC calls, so the nodes stop too.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api_contract import error_document
from xgate.errors import (
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RequestCancelled,
    RequestTimeout,
    UnsupportedMediaType,
    XgateError,
    http_headers,
)
from xgate.logging import get_logger

log = get_logger("xgate.gateway")

TIMEOUT_HEADER = b"x-request-timeout"
# When the request being served must be answered (loop time), set by the middleware for the
# handler task it starts: a check that could not be served before it is refused at admission.
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("xgate_request_deadline", default=None)
MB = 1024 * 1024


class AdmissionSettings(BaseModel):
    """`[gateway.admission]` in the gateway config (docs/SECURITY.md, "Overload control")."""

    model_config = ConfigDict(extra="forbid")

    max_inflight_checks: int = Field(default=8, ge=1, le=4096, description="checks computing at once")
    max_queued_checks: int = Field(default=32, ge=0, le=100_000, description="checks waiting for a slot")
    max_queued_per_user: int = Field(default=8, ge=1, le=100_000, description="one user's share of the queue")
    max_queued_per_agency: int = Field(default=16, ge=1, le=100_000, description="one agency's share")
    max_queued_mb: int = Field(default=128, ge=1, le=65_536, description="request bytes of waiting checks")
    max_buffered_mb: int = Field(default=256, ge=1, le=65_536, description="request bodies held at once")
    # 1.5 s: a check refused after waiting is refused within 2 s of arriving, its trip included
    # (at 2.0 one waited-out refusal reached the client after 2.2 s on a loaded host).
    max_queue_wait_s: float = Field(
        default=1.5, gt=0, le=600, description="longest a check waits for a slot; then it is refused (503)"
    )
    body_read_timeout_s: float = Field(default=15.0, gt=0, le=600, description="to receive a whole body")
    header_read_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="to receive a request's head, from the connection or the last answer"
    )
    max_head_kb: int = Field(
        default=64,
        ge=4,
        le=1024,
        description="a request's line and headers at most; beyond, 431 and the connection ends",
    )
    max_connections: int = Field(
        default=4096, ge=16, le=1_000_000, description="connections and requests at once; beyond, 503 at once"
    )
    request_deadline_s: float = Field(default=60.0, gt=0, le=3600, description="longest a check may take")

    @model_validator(mode="after")
    def _shares(self) -> AdmissionSettings:
        if self.max_buffered_mb < self.max_queued_mb:
            raise ValueError("max_buffered_mb must be at least max_queued_mb (queued bodies are buffered)")
        return self


# ---------------------------------------------------------------------------------------------
# The limiter core
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Waiter:
    agency: str
    user: str
    nbytes: int
    future: asyncio.Future[None]
    granted: bool = False


REFUSAL_MARGIN_S = 1.0  # a queued check is refused at least this long before its deadline
PACE_WINDOW_S = 2.0  # refusals and completions are counted per window of this length (5 s adapted too slowly)
MAX_RETRY_AFTER_S = 60.0


@dataclass
class AdmissionController:
    settings: AdmissionSettings
    clock: Callable[[], float] = time.monotonic
    service_s: float = 1.0  # moving average of one check's service time (Retry-After estimates)
    jitter: Callable[[], float] = field(default=lambda: random.uniform(0.8, 1.2))  # spreads retries
    spread: Callable[[], float] = random.random  # where in the herd's return window this client falls
    # Retry-After under contention: grows while refusals outnumber twice the completions.
    contention_retry_s: float = 1.0
    _window_started: float | None = None
    _refused_in_window: int = 0
    _served_in_window: int = 0
    _inflight: int = 0
    _queued: int = 0
    _entered: int = 0  # supervised requests past the gate after their body (see `enter`)
    _queued_bytes: int = 0
    _per_user: Counter[tuple[str, str]] = field(default_factory=Counter)
    _per_agency: Counter[str] = field(default_factory=Counter)
    # agency -> user -> waiters; both levels in round-robin order (front is served next)
    _queues: OrderedDict[str, OrderedDict[str, deque[_Waiter]]] = field(default_factory=OrderedDict)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        return self._queued

    def retry_after_s(self) -> float:
        """Whole seconds until a retry has a fair chance: the queue ahead drained at the recent pace,
        or longer while many more clients are refused than served (`contention_retry_s`), with
        jitter; plus a uniform share of the time it takes to serve, once each, the clients refused
        so far in this window (the herd): 1,000 clients refused at once come back spread over the
        minute it takes to serve them, not together a second later."""
        per_s = self.settings.max_inflight_checks / self.service_s
        drained = (self._queued + self._inflight + 1) / per_s
        base = max(drained, self.contention_retry_s) * self.jitter()
        herd = min(self._refused_in_window / per_s, max(0.0, MAX_RETRY_AFTER_S - base))  # spread within the cap
        wait = base + herd * self.spread()
        return float(min(MAX_RETRY_AFTER_S, max(1, math.ceil(wait))))

    def _roll_window(self) -> None:
        """Each window: scale the contention Retry-After by refusals / (2 x completions), at most
        x4 or /4 per window. Refused clients come back every Retry-After, so it settles where
        about twice as many come back as are served: enough to keep every slot busy, without a
        storm of refusals that costs the machine more than the checks do."""
        now = self.clock()
        if self._window_started is None:
            self._window_started = now
            return
        if now - self._window_started < PACE_WINDOW_S:
            return
        ratio = self._refused_in_window / (2 * max(1, self._served_in_window))
        scaled = self.contention_retry_s * min(4.0, max(0.25, ratio))
        self.contention_retry_s = min(MAX_RETRY_AFTER_S, max(1.0, scaled))
        self._window_started, self._refused_in_window, self._served_in_window = now, 0, 0

    def _refuse(self, why: str) -> Overloaded:
        self._roll_window()
        self._refused_in_window += 1
        return Overloaded(f"the gateway is overloaded: {why}; retry later", retry_after_s=self.retry_after_s())

    def _check_room(self, agency: str, user: str, nbytes: int) -> None:
        s = self.settings
        if self._queued >= s.max_queued_checks:
            raise self._refuse(f"{self._inflight} checks running and {self._queued} waiting")
        if self._queued_bytes + nbytes > s.max_queued_mb * MB:
            raise self._refuse("the waiting checks' request bytes are at their limit")
        if self._per_agency[agency] >= s.max_queued_per_agency:
            raise self._refuse(f"agency '{agency}' has its full share of the queue waiting")
        if self._per_user[(agency, user)] >= s.max_queued_per_user:
            raise self._refuse("this user has their full share of the queue waiting")

    def refuse_early(self, deadline_s: float) -> None:
        """Before a body is read: refuse at once what could not even be queued (the queue is full,
        or the wait would outlast `deadline_s`), so an overloaded gateway spends nothing on it."""
        if self._inflight < self.settings.max_inflight_checks:
            return
        if self._queued >= self.settings.max_queued_checks:
            raise self._refuse(f"{self._inflight} checks running and {self._queued} waiting")
        self._refuse_if_late(deadline_s)

    @property
    def entered(self) -> int:
        return self._entered

    def entry_bound(self) -> int:
        """Supervised requests let past their body at once: twice what can hold a slot or a queue
        place, so requests on their way to the queue (authentication, validation) or on their way
        out fit, and fair shares are still decided at `acquire`."""
        return 2 * (self.settings.max_inflight_checks + self.settings.max_queued_checks)

    def enter(self, deadline_s: float) -> None:
        """After a body is read, before any other work: refuse at once when more requests are on
        their way than could ever hold a place (a burst: every request passed `refuse_early` before
        the first took a slot), then count this one in until `leave`. No await between the two, so
        a burst is cut here at the bound, before authentication and the route run for each."""
        if self._entered >= self.entry_bound():
            raise self._refuse(f"{self._inflight} checks running and {self._queued} waiting, more arriving")
        self.refuse_early(deadline_s)
        self._entered += 1

    def leave(self) -> None:
        self._entered -= 1

    def _refuse_if_late(self, left_s: float | None) -> None:
        """Refuse now what would wait past its deadline (`left_s` from now) or past max_queue_wait_s."""
        wait = self.expected_wait_s()
        if left_s is not None and wait + self.service_s > left_s:  # it would time out waiting: say so now
            raise self._refuse(f"a check queued now would not be answered within its {max(left_s, 0):.1f} s deadline")
        if wait > self.settings.max_queue_wait_s:
            raise self._refuse(f"a check queued now would wait more than {self.settings.max_queue_wait_s:g} s")

    def expected_wait_s(self) -> float:
        """How long a check queued now would wait, at the recent pace."""
        return (self._queued + 1) * self.service_s / self.settings.max_inflight_checks

    async def acquire(self, agency: str, user: str, nbytes: int = 0) -> None:
        """Take a slot now, or wait in the fair queue, or raise Overloaded at once."""
        if self._inflight < self.settings.max_inflight_checks and self._queued == 0:
            self._inflight += 1
            return
        self._check_room(agency, user, nbytes)
        loop = asyncio.get_running_loop()
        deadline = REQUEST_DEADLINE.get()
        left = deadline - loop.time() if deadline is not None else None
        self._refuse_if_late(left)
        # A queued check is refused when no slot came in time: the refusal comes within
        # max_queue_wait_s, never at the end of the caller's deadline.
        wait_s = self.settings.max_queue_wait_s
        if left is not None:  # leave room to serve it, and at least a second for the refusal to get out
            wait_s = min(wait_s, left - max(self.service_s, REFUSAL_MARGIN_S))
        waiter = _Waiter(agency, user, nbytes, loop.create_future())
        self._queues.setdefault(agency, OrderedDict()).setdefault(user, deque()).append(waiter)
        self._queued += 1
        self._queued_bytes += nbytes
        self._per_agency[agency] += 1
        self._per_user[(agency, user)] += 1
        expiry = loop.call_later(max(0.0, wait_s), self._expire, waiter, wait_s)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.granted:  # granted and cancelled in the same tick: hand the slot on
                self.release(None)
            else:
                self._unqueue(waiter)
            raise
        finally:
            expiry.cancel()

    def _expire(self, waiter: _Waiter, wait_s: float) -> None:
        if waiter.future.done():
            return
        self._unqueue(waiter)
        why = f"no slot came free within {max(wait_s, 0):.3g} s of waiting (in time for the request's deadline)"
        waiter.future.set_exception(self._refuse(why))

    def release(self, service_s: float | None) -> None:
        """Give a slot back (with the time it was held, to keep the estimate current)."""
        if service_s is not None:
            self.service_s = 0.8 * self.service_s + 0.2 * max(service_s, 0.001)
            self._roll_window()
            self._served_in_window += 1
        self._inflight -= 1
        self._dispatch()

    @asynccontextmanager
    async def slot(self, agency: str, user: str, nbytes: int = 0) -> AsyncIterator[None]:
        await self.acquire(agency, user, nbytes)
        started = self.clock()
        try:
            yield
        finally:
            self.release(self.clock() - started)

    def _dispatch(self) -> None:
        while self._inflight < self.settings.max_inflight_checks and self._queues:
            agency, users = next(iter(self._queues.items()))
            user, waiters = next(iter(users.items()))
            waiter = waiters.popleft()
            self._forget(waiter)
            users.move_to_end(user)  # round robin: this user goes behind the agency's others
            self._queues.move_to_end(agency)  # and this agency behind the other agencies
            self._drop_empty(agency, user)
            if waiter.future.done():  # cancelled while waiting; its task will not take the slot
                continue
            waiter.granted = True
            self._inflight += 1
            waiter.future.set_result(None)

    def _unqueue(self, waiter: _Waiter) -> None:
        waiters = self._queues.get(waiter.agency, OrderedDict()).get(waiter.user)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            self._forget(waiter)
            self._drop_empty(waiter.agency, waiter.user)

    def _forget(self, waiter: _Waiter) -> None:
        self._queued -= 1
        self._queued_bytes -= waiter.nbytes
        self._per_agency[waiter.agency] -= 1
        self._per_user[(waiter.agency, waiter.user)] -= 1
        if not self._per_agency[waiter.agency]:
            del self._per_agency[waiter.agency]
        if not self._per_user[(waiter.agency, waiter.user)]:
            del self._per_user[(waiter.agency, waiter.user)]

    def _drop_empty(self, agency: str, user: str) -> None:
        users = self._queues.get(agency)
        if users is None:
            return
        if user in users and not users[user]:
            del users[user]
        if not users:
            del self._queues[agency]


class ByteBudget:
    """Bytes of request bodies the process holds at once (being read, waiting or running)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, nbytes: int) -> None:
        if self.held + nbytes > self.limit:
            raise Overloaded(
                "the gateway is overloaded: request bodies in progress are at their byte limit; retry later",
                retry_after_s=1.0,
            )
        self.held += nbytes

    def give(self, nbytes: int) -> None:
        self.held -= nbytes


# ---------------------------------------------------------------------------------------------
# The ASGI edge
# ---------------------------------------------------------------------------------------------
def error_body(scope: Scope, exc: XgateError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and JSON body of an error, in the gateway's one error shape."""
    headers = [(b"content-type", b"application/json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in http_headers(exc).items()]
    return exc.http_status, headers, json.dumps(error_document(scope, exc.code, exc.message, exc.details)).encode()


async def send_error(scope: Scope, send: Send, exc: XgateError) -> None:
    scope.setdefault("state", {})["error"] = exc.code  # where the audit middleware reads it
    status, headers, body = error_body(scope, exc)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def media_type_problem(raw_headers: Iterable[tuple[bytes, bytes]]) -> UnsupportedMediaType | None:
    """Every body the API takes is uncompressed UTF-8 JSON. A body declared as anything else was
    parsed as JSON all the same (gzip and br were ignored, a form was read as an empty object), so a
    proxy that decodes what the gateway ignores would see another request than the gateway did.
    Every header line counts: a repeated one (gzip, then identity) is not read as its last."""
    encodings: list[str] = []
    types: list[str] = []
    for name, value in raw_headers:
        if name.lower() == b"content-encoding":
            encodings += [e.strip().lower() for e in value.decode("latin-1").split(",")]
        elif name.lower() == b"content-type":
            types.append(value.decode("latin-1"))
    unaccepted = [e for e in encodings if e not in ("", "identity")]
    if unaccepted:
        return UnsupportedMediaType(
            f"Content-Encoding '{unaccepted[0][:32]}' is not accepted: send the body uncompressed"
        )
    if len(types) != 1 or types[0].partition(";")[0].strip().lower() != "application/json":
        return UnsupportedMediaType("send the body as Content-Type: application/json (once)")
    for parameter in types[0].partition(";")[2].split(";"):
        key, _, setting = parameter.partition("=")
        if key.strip().lower() == "charset" and setting.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return UnsupportedMediaType("a JSON body is UTF-8: send charset=utf-8 or no charset")
    return None


class _Refused(Exception):
    def __init__(self, error: XgateError) -> None:
        self.error = error


class _Gone(Exception):
    """The client disconnected while sending its body."""


class AdmissionMiddleware:
    """Read bodies under limits and deadlines; supervise the heavy routes (see module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: AdmissionSettings,
        max_body_bytes: int,
        supervised: Iterable[tuple[str, str]] = (("POST", "/v1/checks"),),
        controller: AdmissionController | None = None,
    ) -> None:
        self.app = app
        self.controller = controller
        self.settings = settings
        self.max_body_bytes = max_body_bytes
        self.budget = ByteBudget(settings.max_buffered_mb * MB)
        self.supervised = frozenset(supervised)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        headers = dict(scope.get("headers", []))  # the last of a repeated header; h11 refuses two lengths
        supervised = (scope["method"], scope["path"]) in self.supervised
        try:
            declared = self._declared_length(headers)
        except XgateError as exc:
            await send_error(scope, send, exc)
            return
        if supervised and self.controller is not None:
            try:
                self.controller.refuse_early(self._deadline_s(headers))
            except XgateError as exc:  # Overloaded, or a malformed X-Request-Timeout
                await send_error(scope, send, exc)
                return
        has_body = declared is None or declared > 0  # None: chunked, length unknown
        unsupported = media_type_problem(scope.get("headers", [])) if has_body else None
        if unsupported is not None:
            await send_error(scope, send, unsupported)
            return
        if not has_body and not supervised:
            await self.app(scope, receive, send)
            return
        # Bytes are reserved as they arrive, never as declared: a Content-Length with no body behind
        # it (before any authentication) would otherwise hold the budget and lock every POST out.
        reserved = 0
        try:
            try:
                body, extra = await self._read_body(receive) if has_body else (b"", 0)
            except _Refused as refused:
                await send_error(scope, send, refused.error)
                return
            except _Gone:  # recorded as what it is (499), not as the 500 of a request never answered
                log.info("request_abandoned", reason="client_gone_during_body", path=scope["path"])
                await send_error(scope, send, RequestCancelled("the client disconnected before its body arrived"))
                return
            reserved += extra
            scope.setdefault("state", {})["body_bytes"] = len(body)
            gone = asyncio.Event()
            replay = _replay(body, gone)
            if not supervised:
                await self.app(scope, replay, send)
                return
            if self.controller is not None:
                try:
                    self.controller.enter(self._deadline_s(headers))
                except XgateError as exc:
                    await send_error(scope, send, exc)
                    return
            try:
                await self._supervise(scope, replay, send, receive, gone, started, headers)
            finally:
                if self.controller is not None:
                    self.controller.leave()
        finally:
            self.budget.give(reserved)

    def _declared_length(self, headers: dict[bytes, bytes]) -> int | None:
        if b"transfer-encoding" in headers:
            return None
        raw = headers.get(b"content-length")
        if raw is None:
            return 0
        if not raw.isdigit() or not raw.isascii():
            raise InvalidInput("Content-Length is not a whole number")
        declared = int(raw)
        if declared > self.max_body_bytes:
            raise PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
        return declared

    async def _read_body(self, receive: Receive) -> tuple[bytes, int]:
        """The whole body within the read deadline, each chunk reserved from the byte budget as it
        arrives; returns it and the bytes reserved (given back here if the read fails)."""
        parts: list[bytes] = []
        seen = 0
        extra = 0
        try:
            async with asyncio.timeout(self.settings.body_read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Gone
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    if seen > self.max_body_bytes:
                        raise _Refused(PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes"))
                    try:
                        self.budget.take(len(chunk))
                    except XgateError as exc:
                        raise _Refused(exc) from None
                    extra += len(chunk)
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            self.budget.give(extra)
            raise _Refused(
                RequestTimeout(f"request body not received within {self.settings.body_read_timeout_s:g} s")
            ) from None
        except (_Refused, _Gone):
            self.budget.give(extra)
            raise
        return b"".join(parts), extra

    def _deadline_s(self, headers: dict[bytes, bytes]) -> float:
        deadline = self.settings.request_deadline_s
        raw = headers.get(TIMEOUT_HEADER)
        if raw is not None:
            try:
                asked = float(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise InvalidInput("X-Request-Timeout must be a number of seconds") from None
            if not 0 < asked <= 3600 or math.isnan(asked):
                raise InvalidInput("X-Request-Timeout must be between 0 and 3600 seconds")
            deadline = min(deadline, asked)
        return deadline

    async def _supervise(  # the ASGI triple plus the supervision state
        self,
        scope: Scope,
        replay: Receive,
        send: Send,
        receive: Receive,
        gone: asyncio.Event,
        started: float,
        headers: dict[bytes, bytes],
    ) -> None:
        try:
            deadline = self._deadline_s(headers)
        except XgateError as exc:
            await send_error(scope, send, exc)
            return
        responded = False

        async def tracked_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        token = REQUEST_DEADLINE.set(asyncio.get_running_loop().time() + deadline - (time.monotonic() - started))
        try:
            handler = asyncio.ensure_future(self.app(scope, replay, tracked_send))  # copies the context
        finally:
            REQUEST_DEADLINE.reset(token)
        watcher = asyncio.ensure_future(watch())
        remaining = max(0.0, deadline - (time.monotonic() - started))
        try:
            await asyncio.wait({handler, watcher}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
        if handler.done() or (responded and not gone.is_set()):
            await handler  # answered, or answering: a response in flight is finished, never cut
            return
        handler.cancel()
        with suppress(asyncio.CancelledError):
            await handler
        if gone.is_set():
            error: XgateError = RequestCancelled("the client disconnected; the check was cancelled")
            log.info("check_abandoned", reason="client_gone", path=scope["path"])
        else:
            error = DeadlineExceeded(f"the request's deadline of {deadline:g} s passed; the check was cancelled")
            log.info("check_abandoned", reason="deadline", path=scope["path"], deadline_s=deadline)
        if not responded:
            await send_error(scope, send, error)


def _replay(body: bytes, gone: asyncio.Event) -> Receive:
    """Hand the buffered body to the app once, then report a disconnect only when one happens."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive
