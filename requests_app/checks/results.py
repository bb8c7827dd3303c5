"""What a check run produces: statuses, the verdict order, one result, a report.

The report shape (``{id, subject, status, detail, evidence}`` per check, the verdict the
worst status) is the contract with the rest of the application: stored per request,
shown on its page, compared by the nightly recheck (docs/dns-checks.md).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

# Re-exported: the engine's modules and callers import them from here.
from requests_app.wording import Message
from requests_app.wording import Text
from requests_app.wording import _
from requests_app.wording import message_dict

__all__ = ["VERDICT_ORDER", "CheckResult", "CheckStatus", "Message", "Report", "Text", "_",
           "message_dict", "result", "worst_status"]


class CheckStatus(enum.StrEnum):
    """Outcome of one check; the request's verdict is the worst of them."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"  # DNS could not answer: retried, never taken as pass or fail


# Best to worst. A definite failure outranks an unanswered look-up: however the DNS
# error would have ended, the request already cannot go through as it is, so it goes
# back to the requester at once instead of waiting out the retries.
VERDICT_ORDER = (CheckStatus.PASS, CheckStatus.WARN, CheckStatus.ERROR, CheckStatus.FAIL)
_RANK = {status: rank for rank, status in enumerate(VERDICT_ORDER)}


def worst_status(statuses: Iterable[str]) -> CheckStatus:
    """The verdict: ``fail`` > ``error`` > ``warn`` > ``pass`` (``pass`` when empty).

    The one definition of the order: the engine's reports, the recorded verdict of a
    request and the CLI's exit code all come from here.
    """
    return max((CheckStatus(s) for s in statuses), key=_RANK.__getitem__,
               default=CheckStatus.PASS)


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: ``{id, subject, status, detail, evidence}``."""

    id: str
    subject: str
    status: CheckStatus
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "subject": self.subject, "status": str(self.status),
                "detail": self.detail, "evidence": self.evidence}


@dataclass(frozen=True)
class Report:
    """All results of one request and their verdict (the worst status)."""

    verdict: CheckStatus
    checks: tuple[CheckResult, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": str(self.verdict), "checks": [c.as_dict() for c in self.checks]}


def result(check_id: str, subject: str, status: CheckStatus, detail: Text,
           **evidence: Any) -> CheckResult:
    """A :class:`CheckResult` with its evidence given as keywords (how checks write them).

    A :class:`Message` ``detail`` is stored as its English sentence, and its template
    and values under ``evidence["message"]`` for the display layer to translate.
    """
    if isinstance(detail, Message):
        evidence["message"] = detail.as_dict()
    return CheckResult(check_id, subject, status, str(detail), evidence)

