"""The engine: plan a request, run its checks concurrently, batch and shard many.

Why the engine looks the way it does:

* Every check of a request runs concurrently, and the whole run shares one deadline
  (``CheckConfig.lifetime``): look-ups made late in a run (an SPF include five levels
  down) get only the time that is left, and a safety net marks anything still running
  at the deadline as ``error``. An unanswered query is never a pass or a fail.
* Look-ups are memoised per run (per batch in :func:`run_many`): see ``lookups.py``.
* Which checks run, on what, and what they ask first is declared by the check
  families (``registry.py``); this module knows no check by name.
* Batches are CPU-bound once answers are quick, so the engine spends little per
  request: checks start eagerly and become tasks only when they must wait, a batch
  asks ahead, the collector is paused, batches run on uvloop (docs/dns-checks.md,
  "Batches are CPU-bound").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import types
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Generator
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from requests_app.dns import DnsAnswer
from requests_app.dns import TransientDnsError
from requests_app.dns import make_resolver

from .config import CheckConfig
from .config import CheckSpec
from .family import Plan
from .fixes import with_fixes
from .lookups import Lookups
from .lookups import Run
from .names import dns_name
from .names import normalise_domain
from .names import normalise_fqdn
from .registry import FAMILIES
from .results import CheckResult
from .results import CheckStatus
from .results import Message
from .results import Report
from .results import _
from .results import result
from .results import worst_status

if TYPE_CHECKING:
    import dns.asyncresolver

__all__ = [
    "DEADLINE_MARGIN",
    "batch_event_loop",
    "first_lookups",
    "gc_paused",
    "make_plan",
    "run_checks",
    "run_checks_sync",
    "run_many",
    "run_many_sharded",
    "run_many_sync",
    "run_sync",
]

log = logging.getLogger(__name__)

# Extra time after the lifetime before unfinished checks are declared ``error``: the
# resolver itself stops at the lifetime, this only covers scheduling and parsing.
DEADLINE_MARGIN = 0.5


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


async def _guard(check_id: str, subject: str,
                 coro: Awaitable[CheckResult]) -> CheckResult:
    try:
        return await coro
    except TransientDnsError as exc:
        return result(check_id, subject, CheckStatus.ERROR,
                      Message(_("DNS did not answer: %(error)s"), error=str(exc)))
    except Exception as exc:  # a bug must not read as pass or fail
        log.exception("check %s(%s) crashed", check_id, subject)
        return result(check_id, subject, CheckStatus.ERROR,
                      Message(_("internal error: %(error)s"),
                              error=f"{type(exc).__name__}: {exc}"))


_T = TypeVar("_T")


def make_plan(spec: CheckSpec, config: CheckConfig) -> Plan:
    """A request's normalised inputs, with the checks that need no look-up already run.

    Raises ``ValueError`` for an invalid FQDN, sender domain or DKIM selector. The
    families with a ``judge`` run here, in registry order, and may narrow the plan (the
    address policy takes the addresses it refuses out of what the DNS checks see).
    """
    fqdn = normalise_fqdn(spec.fqdn) if spec.fqdn is not None else None
    domains = _unique(normalise_domain(d) for d in spec.sender_domains)
    selector = dns_name(spec.dkim_selector, "DKIM selector") if spec.dkim_selector else None
    made = Plan(fqdn, domains, selector, _unique(a.strip() for a in spec.addresses),
                report_to=spec.report_to)
    for family in FAMILIES:
        judge = family.judge
        if judge is not None:
            found = [judge(config, made, s) for s in family.subjects(made)]
            made.judged[family.id] = found
            if family.narrow is not None:
                family.narrow(made, found)
    return made


def first_lookups(planned: Plan) -> list[tuple[str, str]]:
    """The look-ups each check makes first, whatever the answers: safe to ask early."""
    asked: list[tuple[str, str]] = []
    for family in FAMILIES:
        first = family.first_lookups
        if first is not None:
            for subject in family.subjects(planned):
                asked += first(planned, subject)
    return asked


@types.coroutine
def _resume(coro: Coroutine[Any, Any, _T], waiting: Any) -> Generator[Any, Any, _T]:
    """Go on, inside a task, with a coroutine whose first step ran eagerly.

    The step yielded ``waiting`` (what it awaits); the task waits for it in the
    coroutine's place, then hands the coroutine back its result, or its cancellation.
    """
    while True:
        try:
            yield waiting
        except BaseException as exc:  # cancelled while waiting: the coroutine decides
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        return (yield from coro)  # type: ignore[misc]


async def _run(planned: Plan, config: CheckConfig, lookups: Lookups) -> Report:
    """Every check of one plan, concurrently, each started eagerly, in registry order.

    Why eagerly: a check whose answers are already in (shared within a batch, asked
    ahead by :func:`run_many`) finishes in its first step, without a task of its own;
    only a check that must wait becomes a task.
    """
    run = Run(config, lookups)
    results: list[CheckResult | None] = []
    waiting: list[tuple[int, str, str, asyncio.Task[CheckResult]]] = []
    for family in FAMILIES:
        check = family.check
        if check is None:  # a judge: it ran while planning
            results += planned.judged[family.id]
            continue
        check_id = family.id
        for subject in family.subjects(planned):
            coro = _guard(check_id, subject, check(run, planned, subject))
            try:
                step = coro.send(None)
            except StopIteration as done:
                results.append(done.value)
                continue
            waiting.append((len(results), check_id, subject,
                            asyncio.ensure_future(_resume(coro, step))))
            results.append(None)
    if waiting:
        await asyncio.wait([w[3] for w in waiting], timeout=max(
            0.0, run.deadline - asyncio.get_running_loop().time()) + DEADLINE_MARGIN)
    for index, check_id, subject, task in waiting:
        if task.done():
            results[index] = task.result()
        else:
            task.cancel()
            results[index] = result(check_id, subject, CheckStatus.ERROR,
                                    Message(_("no DNS answer within %(seconds)ss"),
                                            seconds=f"{config.lifetime:g}"))
    done = with_fixes([r for r in results if r is not None], config,
                      report_to=planned.report_to)
    return Report(worst_status(r.status for r in done), tuple(done))


async def run_checks(spec: CheckSpec, config: CheckConfig,
                     resolver: dns.asyncresolver.Resolver) -> Report:
    """Run every check that applies to ``spec`` concurrently, within ``config.lifetime``.

    Raises ``ValueError`` if the FQDN, a sender domain or the DKIM selector is not a valid
    name (the forms and the CLI validate first); a malformed *address* is reported by
    ``address_policy`` instead, because refusing it is that check's job.
    """
    lookups = Lookups(resolver)
    try:
        return await _run(make_plan(spec, config), config, lookups)
    finally:
        lookups.close()


def batch_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed, else asyncio's: the loop for batches.

    Why: once answers are quick a batch is CPU-bound, and much of that CPU is the event
    loop's own bookkeeping (handles, timers, the UDP transport); uvloop does it in C
    (bench/recheck.py --event-loop asyncio shows the other figure). A single request does
    not gain: creating a uvloop loop costs more than the few look-ups save, so
    :func:`run_sync` uses asyncio's loop unless told otherwise.
    """
    try:
        import uvloop  # deferred: optional (no uvloop on Windows), and only batches use it
    except ImportError:  # e.g. Windows, where uvloop does not exist
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector for one bounded run.

    Why: a batch keeps thousands of futures, answers and result dicts alive until it ends,
    so the collector's generational passes keep re-walking them while finding almost no
    garbage (a large share of the recheck's CPU, docs/dns-checks.md). A run is bounded
    (a batch, a deadline), so what cycles it makes wait only until it ends, when the
    collector is restored as it was. Nested pauses leave it off until the outermost ends
    (the recheck pauses it over a whole batch: checks *and* the writes that record them,
    so the first collection after a batch does not re-walk every report still alive).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_sync(coro: Coroutine[Any, Any, _T], *,
             loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> _T:
    """Run one engine coroutine to completion on a fresh loop, the collector paused.

    For synchronous callers (Celery tasks, the CLI, the recheck): must not run inside an
    event loop. ``loop_factory`` defaults to asyncio's loop.
    """
    with gc_paused(), asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def run_checks_sync(spec: CheckSpec, config: CheckConfig,
                    nameservers: Sequence[str]) -> Report:
    """Blocking wrapper for Celery tasks and the CLI (must not run inside an event loop)."""
    resolver = make_resolver(nameservers, config.lifetime)
    return run_sync(run_checks(spec, config, resolver))


def _all_done(futures: list[asyncio.Future[Any]], timeout: float) -> asyncio.Future[None]:
    """A future that ends when all of ``futures`` have, or after ``timeout``.

    Cheaper than ``asyncio.wait`` (no sets, no callbacks to remove), and it never
    cancels or consumes the futures, which other checks share.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    count = len(futures)

    def one_done(_future: object) -> None:
        nonlocal count
        count -= 1
        if count == 0 and not waiter.done():
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)
    timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(None))
    waiter.add_done_callback(lambda _w: timer.cancel())
    return waiter


async def run_many(specs: Sequence[CheckSpec], config: CheckConfig,
                   resolver: dns.asyncresolver.Resolver, concurrency: int = 100) -> list[Report]:
    """Check many requests (periodic rechecks, the benchmark), sharing look-ups.

    ``concurrency`` bounds the requests in flight; each still gets its own deadline from
    when it starts. The first look-ups of the next ``concurrency`` requests are asked
    ahead, so that most checks find their answers in and finish without waiting (see
    :func:`_run`); a look-up asked ahead ends before the deadline of its request. Look-ups
    are memoised for the whole batch, so memory grows with the batch: chunk very large
    batches (tens of thousands) into several calls.
    """
    lookups = Lookups(resolver)
    loop = asyncio.get_running_loop()
    reports: list[Report | None] = [None] * len(specs)
    plans: list[Plan | None] = [None] * len(specs)
    window = max(1, concurrency)
    asked: list[list[asyncio.Future[DnsAnswer]]] = [[] for _ in specs]
    pending = iter(range(len(specs)))

    def ask_ahead(index: int) -> None:
        if index >= len(specs):
            return
        try:
            plan = plans[index] = make_plan(specs[index], config)
        except ValueError:
            return  # raised again, in order, when its turn comes
        deadline = loop.time() + config.lifetime
        asked[index] = [lookups.get(name, rdtype, deadline)
                        for name, rdtype in first_lookups(plan)]

    async def worker() -> None:
        # ``concurrency`` workers drain one iterator: no task or semaphore wait per request
        for index in pending:
            ask_ahead(index + window)
            unanswered = [f for f in asked[index] if not f.done()]
            if unanswered:  # each ends within the lifetime; the margin is a safety net
                await _all_done(unanswered, config.lifetime + DEADLINE_MARGIN)
            plan = plans[index] or make_plan(specs[index], config)
            plans[index] = None
            asked[index] = []
            reports[index] = await _run(plan, config, lookups)

    try:
        for index in range(min(window, len(specs))):
            ask_ahead(index)
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(specs))))))
    finally:
        lookups.close()
    return reports  # type: ignore[return-value]  # every slot is filled once gather returns


def run_many_sync(specs: Sequence[CheckSpec], config: CheckConfig,
                  resolver: dns.asyncresolver.Resolver, *, concurrency: int = 100,
                  loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
                  ) -> list[Report]:
    """:func:`run_many` for synchronous callers (the recheck, a shard, the benchmark).

    Runs on :func:`batch_event_loop` unless ``loop_factory`` says otherwise.
    """
    return run_sync(run_many(specs, config, resolver, concurrency=concurrency),
                    loop_factory=loop_factory or batch_event_loop)


def _run_shard(args: tuple[list[CheckSpec], CheckConfig, list[str], int]) -> list[Report]:
    specs, config, nameservers, concurrency = args
    # a fresh resolver per shard: its cache could never hit, the run's memo shares answers
    resolver = make_resolver(nameservers, config.lifetime, cache=False)
    return run_many_sync(specs, config, resolver, concurrency=concurrency)


def run_many_sharded(specs: Sequence[CheckSpec], config: CheckConfig,
                     nameservers: Sequence[str], *, processes: int = 2,
                     concurrency: int = 100, pool: Any = None) -> list[Report]:
    """``run_many`` split over ``processes`` (each its own event loop), reports in order.

    Why: the engine is CPU-bound once answers are quick (README, "Benchmarks"), so one
    event loop uses one core. Inside a process that may not have children
    (a daemonic Celery prefork child) it runs in-process instead; there, more Celery
    worker processes are the way to use more cores. Pass ``pool`` (a
    ``ProcessPoolExecutor``) to reuse worker processes across batches.
    """
    specs = list(specs)
    processes = max(1, min(processes, len(specs)))
    if processes == 1 or multiprocessing.current_process().daemon:
        return _run_shard((specs, config, list(nameservers), concurrency))
    size = -(-len(specs) // processes)
    chunks = [specs[i:i + size] for i in range(0, len(specs), size)]
    jobs = [(c, config, list(nameservers), concurrency) for c in chunks]
    if pool is not None:
        return [report for part in pool.map(_run_shard, jobs) for report in part]
    with ProcessPoolExecutor(max_workers=len(chunks)) as own_pool:
        return [report for part in own_pool.map(_run_shard, jobs) for report in part]
