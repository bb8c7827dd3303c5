"""Errors shared across the layers: raised by services and domain modules, answered by
the front ends (the web pages, ``api/exceptions.py``).

Part of the core: it imports nothing of the package, so any module may raise these
without importing the services.
"""

from __future__ import annotations

__all__ = ["ActionConflict"]


class ActionConflict(Exception):
    """The request is not in a state that allows the action (HTTP 409).

    Raised for a wrong state, an unmet condition, and the loser of a race between two
    approvers: by the time its lock is granted the request has already moved on.
    """
