"""The relay's policy service: sender policy and sending quotas, for Postfix.

Postfix asks it twice per message over the policy delegation protocol
(``check_policy_service inet:127.0.0.1:10040`` in ``smtpd_recipient_restrictions`` and
``smtpd_end_of_data_restrictions``): at ``RCPT`` whether the client may send as the
envelope sender (``sender_policy.sender_allowed``, the one rule the request pages show;
otherwise ``FILTER`` to the SRS re-injection in rewrite mode, or the 553 text in reject
mode), and at ``END-OF-MESSAGE`` whether the entry is under its quota (one Lua script in
Redis counts the message against every window of the entry at once, or refuses it with
``450 4.7.1`` naming the request, the limit and the window). What it knows comes from
one generated file, ``relay_policy`` (see ``docs/policy-service.md`` for the format),
which it re-reads when it changes; a file that does not parse leaves the previous policy
in force, because a half-read policy would wave through what it fails to read.

Why our own server: one generated file must say, per entry, "may send only as these
senders" and "this many messages per 24 hours and per second", switching an entry from
sandbox to production by rewriting one line; postfwd evaluates an ordered rule list per
request and policyd-rate-limit has no sender rule (``docs/policy-service.md`` has the
details and the measurements).

Failures defer, never pass: Redis unreachable gives ``451 4.3.0`` (the client retries,
nothing is lost, no quota is exceeded); if this service is down, Postfix itself answers
``451 4.3.5``.

Two server implementations share the decisions: ``asyncio`` (``redis.asyncio``, uvloop
when installed; the default, better p99 in ``bench/policy.py``) and ``threads`` (one
thread per Postfix connection, the synchronous client). No Django imports: this runs on
the relay without the app.

    python -m requests_app.policyd --policy /etc/postfix/relaydesk/relay_policy \\
        --listen 127.0.0.1:10040 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import sender_policy

__all__ = (
    "KEY_PREFIX",
    "MODES",
    "QUOTA_SCRIPT",
    "REDIS_DOWN",
    "AsyncQuota",
    "Entry",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Quota",
    "Window",
    "decide_rcpt",
    "main",
    "normalise_address",
    "parse_policy",
    "quota_entry",
    "quota_keys",
    "quota_refusal",
)

log = logging.getLogger("relaydesk.policyd")

MODES = sender_policy.MODES
TIERS = ("sandbox", "production")
#: Every quota key starts with this (then ``{<request>}:<seconds>``; the braces are a
#: Redis Cluster hash tag, so the windows of one request live in one slot).
KEY_PREFIX = "relaydesk:quota:"
#: The reply when the counters cannot be reached: defer, so nothing is lost and no
#: quota is exceeded while Redis is away.
REDIS_DOWN = "451 4.3.0 Sending quota cannot be checked right now: retry later"
DUNNO = "DUNNO"

# Protocol limits: Postfix sends about 30 short attributes per request; anything far
# larger is not Postfix, and the connection is closed instead of buffering it.
MAX_LINE = 8192
MAX_ATTRIBUTES = 200


# --------------------------------------------------------------------------------------
# The policy file
# --------------------------------------------------------------------------------------

class PolicyError(ValueError):
    """A policy file that does not parse; the message names the line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``count`` messages in any ``seconds`` long sliding window."""

    count: int
    seconds: int

    def describe(self) -> str:
        """``200 messages per 24 hours``: the limit as the 450 reply names it."""
        unit = {86400: "24 hours", 3600: "hour", 60: "minute", 1: "second"}.get(
            self.seconds, f"{self.seconds} seconds")
        noun = "message" if self.count == 1 else "messages"
        return f"{self.count} {noun} per {unit}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One request as the relay enforces it: its windows, and its senders (servers)."""

    request_id: int
    limits: tuple[Window, ...]
    senders: tuple[str, ...] = ()
    tier: str | None = None  # optional trailing token; the brief's format leaves it out


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed ``relay_policy`` file, indexed for the two questions asked per message."""

    mode: str
    filter: str
    approved: tuple[str, ...]
    clients: Mapping[str, Entry]
    logins: Mapping[str, Entry]

    def client(self, address: str) -> Entry | None:
        key = normalise_address(address)
        return None if key is None else self.clients.get(key)

    def login(self, name: str) -> Entry | None:
        return self.logins.get(name.lower())


def normalise_address(text: str) -> str | None:
    """The address as the file spells it (compressed IPv6, IPv4-mapped as IPv4), or
    ``None`` for something that is not an address (Postfix says ``unknown`` at times)."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.scope_id:
            return None
    return str(address)


_COUNT_WINDOW = re.compile(r"(\d{1,9})/(\d{1,9})")
_REQUEST_ID = re.compile(r"[1-9]\d{0,17}")
_SENDER = re.compile(r"[^\s,@]*@[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_LOGIN = re.compile(r"[^\s#]{1,256}")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_FILTER = re.compile(r"[a-z0-9][a-z0-9_.-]*:\S+")


def _limits(text: str, line: int) -> tuple[Window, ...]:
    windows: list[Window] = []
    for part in text.split(","):
        match = _COUNT_WINDOW.fullmatch(part)
        if match is None:
            raise PolicyError(line, f"limit {part!r} is not COUNT/SECONDS")
        window = Window(int(match[1]), int(match[2]))
        if window.seconds < 1:
            raise PolicyError(line, f"limit {part!r} has a window of 0 seconds")
        if any(w.seconds == window.seconds for w in windows):
            raise PolicyError(line, f"two limits for a {window.seconds}-second window")
        windows.append(window)
    return tuple(windows)


def _senders(text: str, line: int) -> tuple[str, ...]:
    if text == "-":
        return ()
    senders = tuple(text.split(","))
    for sender in senders:
        if _SENDER.fullmatch(sender) is None:
            raise PolicyError(line, f"sender {sender!r} is not user@domain or @domain")
    return senders


def _tier(tokens: list[str], line: int) -> str | None:
    if not tokens:
        return None
    if tokens[0] not in TIERS:
        raise PolicyError(line, f"{tokens[0]!r} after the limits is not a tier "
                                f"({'|'.join(TIERS)})")
    return tokens[0]


def parse_policy(text: str) -> Policy:
    """Parse a whole ``relay_policy`` file; :class:`PolicyError` names the first bad line.

    Strict on purpose: a line this parser does not understand may be an entry the relay
    would otherwise not enforce, so the whole file is refused and the caller keeps the
    policy it had. Lower-case senders and logins, one ``mode``/``approved``, ``filter``
    exactly in rewrite mode, one line per address and login, and every line of a request
    with the same limits (they share its counters).
    """
    mode: str | None = None
    filter_to: str | None = None
    approved: tuple[str, ...] | None = None
    clients: dict[str, Entry] = {}
    logins: dict[str, Entry] = {}
    limits_of: dict[int, tuple[Window, ...]] = {}
    filter_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.isascii():
            raise PolicyError(number, "not ASCII")
        keyword, *args = line.split()
        if keyword == "mode":
            if mode is not None:
                raise PolicyError(number, "a second 'mode' line")
            if len(args) != 1 or args[0] not in MODES:
                raise PolicyError(number, f"'mode' takes one of {', '.join(MODES)}")
            mode = args[0]
        elif keyword == "filter":
            if filter_to is not None:
                raise PolicyError(number, "a second 'filter' line")
            if len(args) != 1 or _FILTER.fullmatch(args[0]) is None:
                raise PolicyError(number, "'filter' takes one transport:destination")
            filter_to, filter_line = args[0], number
        elif keyword == "approved":
            if approved is not None:
                raise PolicyError(number, "a second 'approved' line")
            if args == ["-"]:
                approved = ()
            elif not args or any(_DOMAIN.fullmatch(d) is None for d in args):
                raise PolicyError(number, "'approved' takes lower-case domains, or '-'")
            else:
                approved = tuple(args)
        elif keyword in ("client", "login"):
            want = 4 if keyword == "client" else 3
            if len(args) not in (want, want + 1):
                usage = ("client ADDRESS REQUEST LIMITS SENDERS" if keyword == "client"
                         else "login ACCOUNT REQUEST LIMITS")
                raise PolicyError(number, f"expected '{usage}'")
            name, request, limit_text = args[0], args[1], args[2]
            if _REQUEST_ID.fullmatch(request) is None:
                raise PolicyError(number, f"request id {request!r} is not a positive integer")
            request_id = int(request)
            limits = _limits(limit_text, number)
            if limits_of.setdefault(request_id, limits) != limits:
                raise PolicyError(number, f"request {request_id} has other limits above")
            tier = _tier(args[want:], number)
            if keyword == "client":
                address = normalise_address(name)
                if address is None or "/" in name:
                    raise PolicyError(number, f"{name!r} is not a host address")
                if address in clients:
                    raise PolicyError(number, f"address {address} appears twice")
                clients[address] = Entry(request_id, limits, _senders(args[3], number), tier)
            else:
                if _LOGIN.fullmatch(name) is None or name != name.lower():
                    raise PolicyError(number, f"login {name!r} is not a lower-case account")
                if name in logins:
                    raise PolicyError(number, f"login {name} appears twice")
                logins[name] = Entry(request_id, limits, (), tier)
        else:
            raise PolicyError(number, f"unknown keyword {keyword!r}")
    last = len(text.splitlines())
    if mode is None:
        raise PolicyError(last, "no 'mode' line")
    if approved is None:
        raise PolicyError(last, "no 'approved' line")
    if mode == "rewrite" and filter_to is None:
        raise PolicyError(last, "rewrite mode needs a 'filter' line")
    if mode == "reject" and filter_to is not None:
        raise PolicyError(filter_line, "'filter' is only valid in rewrite mode")
    return Policy(mode, filter_to or "", approved, clients, logins)


# --------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------

def decide_rcpt(policy: Policy, attrs: Mapping[str, str]) -> str:
    """The ``RCPT`` answer: the sender policy for allowlisted servers, nothing else.

    Logins are left to ``reject_authenticated_sender_login_mismatch``; clients not in
    the file are not ours to judge (Postfix's own restrictions decide).
    """
    if attrs.get("sasl_username"):
        return DUNNO
    entry = policy.client(attrs.get("client_address", ""))
    if entry is None:
        return DUNNO
    if sender_policy.sender_allowed(attrs.get("sender", ""), entry.senders, policy.approved):
        return DUNNO
    if policy.mode == "reject":
        return sender_policy.refusal_text(policy.approved)
    return f"FILTER {policy.filter}"


def quota_entry(policy: Policy, attrs: Mapping[str, str]) -> Entry | None:
    """The entry whose quota a finished message counts against: the login's when the
    client authenticated as one in the file, else the client address's, else none."""
    login = attrs.get("sasl_username")
    if login:
        entry = policy.login(login)
        if entry is not None:
            return entry
    return policy.client(attrs.get("client_address", ""))


def quota_keys(entry: Entry) -> list[str]:
    """The Redis keys of the entry's windows (one sorted set each)."""
    return [f"{KEY_PREFIX}{{{entry.request_id}}}:{w.seconds}" for w in entry.limits]


def quota_refusal(entry: Entry, window: Window) -> str:
    """The 450 reply for a full window: which request, which limit, what to do."""
    tier = f", {entry.tier}" if entry.tier else ""
    if entry.tier == "production":
        advice = "retry later, or ask for a higher volume in Relaydesk"
    else:
        advice = "retry later, or ask for production access in Relaydesk"
    return (f"450 4.7.1 Sending quota of request #{entry.request_id} reached "
            f"({window.describe()}{tier}): {advice}")


#: The sliding log, all windows at once. KEYS: one sorted set per window. ARGV: a
#: member unique to this call, then count and window length (ms) per key. Trims each
#: log to the window (by the server's clock, so relays sharing a Redis agree), and adds
#: the message to every log only if no window is full: the answer is 0, or the 1-based
#: index of the first full window. One script, so concurrent messages of one request
#: cannot both take the last slot.
QUOTA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local span = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - span)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    return i
  end
end
local member = t[1] .. t[2] .. ':' .. ARGV[1]
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, member)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return 0
"""

_NONCE = secrets.token_hex(4)
_SEQUENCE = itertools.count()


def _script_args(entry: Entry) -> list[int | str]:
    args: list[int | str] = [f"{_NONCE}{os.getpid()}:{next(_SEQUENCE)}"]
    for window in entry.limits:
        args += [window.count, window.seconds * 1000]
    return args


def _quota_answer(entry: Entry, result: int) -> str:
    if result == 0:
        return DUNNO
    reply = quota_refusal(entry, entry.limits[int(result) - 1])
    log.info("quota: request %s refused (%s)", entry.request_id,
             entry.limits[int(result) - 1].describe())
    return reply


class _OutageLog:
    """Log Redis trouble once when it starts, then at most every 10 s, then recovery:
    an outage must be visible in the log without writing a line per message."""

    def __init__(self) -> None:
        self.failing_since: float | None = None
        self.last = 0.0
        self.count = 0

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.count += 1
        if self.failing_since is None:
            self.failing_since = now
        if now - self.last >= 10:
            self.last = now
            log.error("redis unreachable, deferring messages with 451 4.3.0 "
                      "(%d so far): %s", self.count, exc)

    def ok(self) -> None:
        if self.failing_since is not None:
            log.warning("redis reachable again after %.1f s; %d messages were deferred",
                        time.monotonic() - self.failing_since, self.count)
            self.failing_since, self.last, self.count = None, 0.0, 0


_REDIS_OPTIONS = {
    # Fail fast: Postfix waits for the answer with the client connected; a short,
    # certain 451 beats a long wait. One retry on a broken connection only (a Redis
    # restart leaves the pool's connections stale: without it the first message on each
    # would get a needless 451); never on a timeout, where the script may have run and a
    # retry would count the message twice.
    "socket_timeout": 2.0,
    "socket_connect_timeout": 1.0,
    "health_check_interval": 30,
}


class Quota:
    """The counters, synchronous (the ``threads`` server)."""

    def __init__(self, url: str) -> None:
        retry = Retry(NoBackoff(), 1, (redis.ConnectionError,))
        self.client = redis.Redis.from_url(url, retry=retry, **_REDIS_OPTIONS)
        self.script = self.client.register_script(QUOTA_SCRIPT)
        self.outage = _OutageLog()

    def count(self, entry: Entry) -> str:
        """Count one message against ``entry``; the action to answer."""
        try:
            result = self.script(keys=quota_keys(entry), args=_script_args(entry))
        except redis.RedisError as exc:
            self.outage.failed(exc)
            return REDIS_DOWN
        self.outage.ok()
        return _quota_answer(entry, int(result))

    def close(self) -> None:
        self.client.close()


class AsyncQuota:
    """The counters, for the ``asyncio`` server."""

    def __init__(self, url: str) -> None:
        retry = AsyncRetry(NoBackoff(), 1, (redis.ConnectionError,))
        self.client = aioredis.Redis.from_url(url, retry=retry, **_REDIS_OPTIONS)
        self.script = self.client.register_script(QUOTA_SCRIPT)
        self.outage = _OutageLog()

    async def count(self, entry: Entry) -> str:
        """Count one message against ``entry``; the action to answer."""
        try:
            result = await self.script(keys=quota_keys(entry), args=_script_args(entry))
        except (redis.RedisError, OSError) as exc:
            self.outage.failed(exc)
            return REDIS_DOWN
        self.outage.ok()
        return _quota_answer(entry, int(result))

    async def close(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------------------
# The file on disk: loaded at start, re-read when it changes
# --------------------------------------------------------------------------------------

class PolicyFile:
    """The current policy and where it comes from; ``check()`` re-reads a changed file.

    The change test is (inode, size, mtime): config management installs by rename, so
    the inode changes even within one mtime tick. A failed parse keeps the old policy
    and remembers the bad file's signature, so it is reported once, not every second.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signature: tuple[int, int, int] | None = None
        self.policy = self._read()

    def _stat(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> Policy:
        signature = self._stat()
        # surrogateescape: a stray non-ASCII byte becomes a PolicyError naming its line
        policy = parse_policy(self.path.read_bytes().decode("ascii", "surrogateescape"))
        self.signature = signature
        log.info("policy %s loaded: mode %s, %d client addresses, %d logins",
                 self.path, policy.mode, len(policy.clients), len(policy.logins))
        return policy

    def check(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or ``force``); whether a new policy is in force."""
        try:
            signature = self._stat()
        except OSError as exc:
            log.error("policy %s unreadable, keeping the previous policy: %s", self.path, exc)
            return False
        if signature == self.signature and not force:
            return False
        try:
            self.policy = self._read()
        except (PolicyError, OSError, UnicodeError) as exc:
            self.signature = signature
            log.error("policy %s not loaded, keeping the previous policy: %s", self.path, exc)
            return False
        return True


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------

class ProtocolError(Exception):
    """Input that is not the policy delegation protocol; the connection is closed."""


def _attribute(line: bytes) -> tuple[str, str]:
    text = line.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")
    name, sep, value = text.partition("=")
    if not sep or not name or not name.replace("_", "").isalnum():
        raise ProtocolError(f"not an attribute line: {text[:60]!r}")
    return name, value


def _check_request(attrs: Mapping[str, str]) -> None:
    if attrs.get("request") != "smtpd_access_policy":
        raise ProtocolError(f"request={attrs.get('request', '')[:40]!r}, "
                            "expected smtpd_access_policy")


def _reply(action: str) -> bytes:
    return f"action={action}\n\n".encode()


# --------------------------------------------------------------------------------------
# Server: asyncio
# --------------------------------------------------------------------------------------

class AsyncServer:
    """One task per Postfix connection, requests answered in order on each."""

    def __init__(self, policy: PolicyFile, quota: AsyncQuota) -> None:
        self.policy = policy
        self.quota = quota
        self.idle: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def answer(self, attrs: Mapping[str, str]) -> str:
        state = attrs.get("protocol_state", "").upper()
        policy = self.policy.policy
        if state == "RCPT":
            return decide_rcpt(policy, attrs)
        if state == "END-OF-MESSAGE":
            entry = quota_entry(policy, attrs)
            return DUNNO if entry is None else await self.quota.count(entry)
        return DUNNO

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = writer.get_extra_info("peername")
        attrs: dict[str, str] = {}
        try:
            while not self.stopping:
                if not attrs:
                    self.idle.add(writer)
                line = await reader.readline()
                self.idle.discard(writer)
                if not line:
                    break
                if line in (b"\n", b"\r\n"):
                    _check_request(attrs)
                    writer.write(_reply(await self.answer(attrs)))
                    await writer.drain()
                    attrs = {}
                    continue
                if not line.endswith(b"\n"):
                    break  # EOF in the middle of a request
                name, value = _attribute(line)
                attrs[name] = value
                if len(attrs) > MAX_ATTRIBUTES:
                    raise ProtocolError("too many attributes")
        except (ProtocolError, ValueError, asyncio.LimitOverrunError) as exc:
            log.warning("closing connection from %s: %s", peer, exc)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.idle.discard(writer)
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def watch(self) -> None:
        """Stat the file once a second; parse off the event loop (a big file takes a
        while) and swap the policy in one assignment."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            await loop.run_in_executor(None, self.policy.check)

    async def reload(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.policy.check, True)

    async def serve(self, host: str, port: int, ready: str) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        server = await asyncio.start_server(self.handle, host, port, limit=MAX_LINE,
                                            backlog=512, reuse_address=True)
        watcher = loop.create_task(self.watch())
        log.info(ready)
        await stop.wait()
        # Graceful: no new connections; idle ones are closed (Postfix reconnects to the
        # next instance), a request being answered gets its answer first.
        log.info("stopping")
        self.stopping = True
        server.close()
        watcher.cancel()
        for writer in list(self.idle):
            writer.close()
        pending = list(self.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=5)
            for task in late:
                task.cancel()
        await self.quota.close()
        log.info("stopped")


# --------------------------------------------------------------------------------------
# Server: threads
# --------------------------------------------------------------------------------------

class ThreadServer:
    """One thread per Postfix connection (Postfix keeps each open for many requests)."""

    def __init__(self, policy: PolicyFile, quota: Quota) -> None:
        self.policy = policy
        self.quota = quota
        self.lock = threading.Lock()
        self.idle: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.stopping = threading.Event()
        self.hup = threading.Event()

    def answer(self, attrs: Mapping[str, str]) -> str:
        state = attrs.get("protocol_state", "").upper()
        policy = self.policy.policy
        if state == "RCPT":
            return decide_rcpt(policy, attrs)
        if state == "END-OF-MESSAGE":
            entry = quota_entry(policy, attrs)
            return DUNNO if entry is None else self.quota.count(entry)
        return DUNNO

    def handle(self, conn: socket.socket, peer: object) -> None:
        attrs: dict[str, str] = {}
        reader = conn.makefile("rb")
        try:
            while not self.stopping.is_set():
                if not attrs:
                    with self.lock:
                        self.idle.add(conn)
                line = reader.readline(MAX_LINE + 1)
                with self.lock:
                    self.idle.discard(conn)
                if not line:
                    break
                if line in (b"\n", b"\r\n"):
                    _check_request(attrs)
                    conn.sendall(_reply(self.answer(attrs)))
                    attrs = {}
                    continue
                if not line.endswith(b"\n"):
                    if len(line) > MAX_LINE:
                        raise ProtocolError("line too long")
                    break
                name, value = _attribute(line)
                attrs[name] = value
                if len(attrs) > MAX_ATTRIBUTES:
                    raise ProtocolError("too many attributes")
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", peer, exc)
        except OSError:
            pass
        finally:
            with self.lock:
                self.idle.discard(conn)
                self.threads.discard(threading.current_thread())
            reader.close()
            conn.close()

    def watch(self) -> None:
        while not self.stopping.wait(1.0):
            self.policy.check(force=self.hup.is_set())
            self.hup.clear()

    def serve(self, host: str, port: int, ready: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(512)
        listener.settimeout(0.5)

        def on_signal(signum: int, _frame: object) -> None:
            if signum == signal.SIGHUP:
                self.hup.set()
            else:
                self.stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        threading.Thread(target=self.watch, name="policy-watch", daemon=True).start()
        log.info(ready)
        while not self.stopping.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(None)
            thread = threading.Thread(target=self.handle, args=(conn, peer), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        log.info("stopping")
        listener.close()
        with self.lock:
            for conn in self.idle:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self.threads)
        deadline = time.monotonic() + 5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.quota.close()
        log.info("stopped")


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def _listen(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", text)
    if match is None or not 0 < int(match[2]) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT ([::1]:PORT for IPv6)")
    return match[1], int(match[2])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m requests_app.policyd",
        description="Relaydesk's Postfix policy service: sender policy and quotas.")
    parser.add_argument("--policy", required=True, type=Path,
                        help="the relay_policy file Relaydesk generates")
    parser.add_argument("--listen", type=_listen, default=("127.0.0.1", 10040),
                        help="HOST:PORT to listen on (default 127.0.0.1:10040)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="Redis URL of the quota counters")
    parser.add_argument("--server", choices=("asyncio", "threads"), default="asyncio",
                        help="implementation (asyncio: better p99, see bench/policy.py)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """Run the service until SIGTERM; 2 when the policy file cannot be loaded at start
    (no policy means no enforcement: better Postfix's 451 4.3.5 than passing all)."""
    args = _parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s policyd[%(process)d] %(levelname)s %(message)s")
    try:
        policy = PolicyFile(args.policy)
    except (PolicyError, OSError, UnicodeError) as exc:
        log.critical("policy %s cannot be loaded: %s", args.policy, exc)
        return 2
    host, port = args.listen
    ready = f"listening on {host}:{port} ({args.server})"
    if args.server == "threads":
        ThreadServer(policy, Quota(args.redis)).serve(host, port, ready)
        return 0

    async def run() -> None:
        await AsyncServer(policy, AsyncQuota(args.redis)).serve(host, port, ready)

    try:
        import uvloop  # deferred: optional speed-up, the service runs without it
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
