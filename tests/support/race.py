"""Two users acting on one row at the same moment, each on its own database connection.

The race tests (approvals, claims, take-overs) all need the same harness: start one
thread per user, let them pass a barrier together, record who won and what the loser
was told, and close each thread's connection so the test database can be dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connections

from requests_app.exceptions import ActionConflict

__all__ = ["one_wins", "race"]


def race(act: Callable[[Any], object], users: list[Any], timeout: float = 30.0
         ) -> dict[str, str]:
    """Run ``act(user)`` for every user at once; ``{username: "won" | "conflict: <text>"}``.

    Only :class:`ActionConflict` counts as being told; any other error fails the test
    (it is re-raised in the caller's thread).
    """
    barrier = threading.Barrier(len(users))
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []

    def run(user: Any) -> None:
        try:
            barrier.wait()
            act(user)
            outcomes[user.username] = "won"
        except ActionConflict as exc:
            outcomes[user.username] = f"conflict: {exc}"
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return outcomes


def one_wins(outcomes: dict[str, str]) -> tuple[str, str]:
    """Assert that exactly one user won and every other was told; (winner, what the first
    loser was told)."""
    assert sorted(o.split(":")[0] for o in outcomes.values()) == (
        ["conflict"] * (len(outcomes) - 1) + ["won"]), outcomes
    winner = next(name for name, outcome in outcomes.items() if outcome == "won")
    told = next(o for o in outcomes.values() if o.startswith("conflict"))
    return winner, told.removeprefix("conflict: ")
