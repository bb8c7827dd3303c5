"""What can be done to a relay request: one declaration per transition of its state machine.

Each :class:`Action` says who may fire the transition (its :class:`Role`), the label of
its button, the past tense its messages use, whether it takes a written comment, and the
mail it sends. Everything else is derived from this table, so a rule about an action is
written here and nowhere else:

* the transitions' ``permission=`` functions (``models.permission_of``) and the
  services' 403 messages (``models.role_refusal``) come from the role;
* the web and API action endpoints and the ``request_act`` service accept exactly the
  actions a person may fire (:data:`USER_ACTIONS`);
* the request page's buttons and comment boxes, the flash messages ("Request #7
  withdrawn.") and the 409 messages ("cannot be sent back for changes") come from the
  label, the comment rule and the past tense;
* ``notifications.KINDS_BY_TRIGGER`` and ``relay.REMOVAL_TRIGGERS`` come from the notices.

No Django imports and no imports from the app: every layer may read it.
``tests/test_actions.py`` walks the state machine and fails on a transition without
exactly one declaration here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "AFTER_REMOVAL",
    "PRODUCTION_ACTIONS",
    "USER_ACTIONS",
    "Action",
    "Audience",
    "Comment",
    "Notice",
    "Role",
]


def _(text: str) -> str:
    """Mark ``text`` for translation (gettext_noop): no Django here, so the labels, past
    tenses and confirmations are extracted by ``makemessages`` and translated where they
    are shown (views, templates, ``display.py``; docs/i18n.md)."""
    return text


class Role(enum.StrEnum):
    """Who may fire a transition (the rules themselves: ``models.role_refusal``)."""

    REQUESTER = "requester"  # a member of the owning team
    INDEPENDENT_APPROVER = "independent approver"  # an approver not on the request's side
    SYSTEM = "system"  # tasks only (checks, provisioning, expiry): no person may fire it


class Comment(enum.StrEnum):
    """Whether the request page shows a text box for the action, and whether it must be filled."""

    NONE = "none"  # no box (an API caller's comment still goes to the audit trail)
    OPTIONAL = "optional"
    REQUIRED = "required"  # refused with a 400 naming the field when empty


class Audience(enum.StrEnum):
    """Who receives a notice (the addresses: ``notifications.notification_enqueue``)."""

    OWNERS = "owners"
    APPROVERS = "approvers"
    OWNERS_AND_APPROVERS = "owners+approvers"


@dataclass(frozen=True)
class Notice:
    """The mail an action sends: its template (``emails/<kind>_*``) and audience.

    ``after_removal``: the mail would be untrue until a relay config version without
    the entry exists, so the config build that leaves the entry out writes it
    (``relay.relay_config_rebuild``), not the transition.

    Approvers hear of a request when it reaches their queue (checks passed, or an
    override sent it there), not at submit: a submitted request may never get there
    (its checks fail and it goes back to the owners), and a mail before the checks ran
    asks approvers to look at something they cannot decide yet.
    """

    kind: str
    audience: Audience
    after_removal: bool = False
    # The request reached the approvers' queue. Approvers are told once per arrival of
    # new content: an arrival with the content (``models.content_fingerprint``) their
    # last such mail was about, or an override of a request already in the queue, mails
    # nobody (``notifications.notification_enqueue``), so an unchanged resubmit or an
    # approver's own re-run does not fill their inboxes again.
    arrival: bool = False


@dataclass(frozen=True)
class Action:
    """One transition of ``RelayRequest``, as people and mail see it."""

    name: str  # the transition method
    role: Role
    past: str  # reads after "Request #7 ..." and "cannot be ...": "sent back for changes"
    label: str = ""  # the button; only actions a person fires have one
    comment: Comment = Comment.NONE
    # The transition's keyword argument that receives the comment ("note", "reason"),
    # empty when the transition keeps none (the comment is still in the audit event).
    comment_arg: str = ""
    comment_noun: str = _("comment")  # "A written reason is required to override checks."
    comment_label: str = _("Comment")  # the text box's label on the request page
    notice: Notice | None = None
    # The transition's own keyword arguments besides ``by`` and the comment (what the
    # owners state when they ask for production access). A service validates them
    # (``quotas.request_production_access``) and the request page gives them a form of
    # their own; ``services.request_act`` refuses the action without them (400).
    data: tuple[str, ...] = ()
    # What cannot be undone, asked before the action runs: the request page's button
    # opens a dialog with it, and without JavaScript the web endpoint answers with a
    # confirmation page first (it acts on the POST that carries ``confirm=1``).
    confirm: str = ""

    @property
    def verb(self) -> str:
        """The action inside a sentence: "Only approvers can request changes.", "A
        written comment is required to reject." (the name spelt out)."""
        return self.name.replace("_", " ")

    @property
    def by_user(self) -> bool:
        return self.role is not Role.SYSTEM

    @property
    def shows_comment(self) -> bool:
        return self.comment is not Comment.NONE

    @property
    def needs_comment(self) -> bool:
        return self.comment is Comment.REQUIRED

    @property
    def comment_box_label(self) -> str:
        return f"{self.comment_label} (required)" if self.needs_comment else self.comment_label

    def done_message(self, request_id: int, translate: Callable[[str], str] = _) -> str:
        """The flash message after a person fired it: "Request #7 withdrawn.".

        ``translate`` is the caller's ``gettext`` (this module has no Django): the
        sentence and the past tense are both looked up in the active language.
        """
        return translate(_("Request #%(pk)s %(past)s.")) % {
            "pk": request_id, "past": translate(self.past)}


def _index(*actions: Action) -> dict[str, Action]:
    """The table by transition name; a name declared twice is an error at import."""
    table: dict[str, Action] = {}
    for action in actions:
        if action.name in table:
            raise ValueError(f"action {action.name!r} is declared twice")
        table[action.name] = action
    return table


_PERSON, _APPROVER, _SYSTEM = Role.REQUESTER, Role.INDEPENDENT_APPROVER, Role.SYSTEM

# In the order the request page shows their buttons; the system's transitions last.
ACTIONS: dict[str, Action] = _index(
    # No mail at submit: approvers are told when it reaches their queue (below).
    Action("submit", role=_PERSON, past=_("submitted"), label=_("Submit")),
    Action("withdraw", role=_PERSON, past=_("withdrawn"), label=_("Withdraw"),
           confirm=_("It cannot be submitted again: to ask again, file a new request.")),
    Action("approve", role=_APPROVER, past=_("approved"), label=_("Approve"),
           comment=Comment.OPTIONAL, comment_arg="note",
           notice=Notice("approved", Audience.OWNERS)),
    Action("reject", role=_APPROVER, past=_("rejected"), label=_("Reject"),
           comment=Comment.REQUIRED, comment_arg="note",
           confirm=_("The decision is final: the owners are told, and only a new request "
                   "can ask again."),
           notice=Notice("rejected", Audience.OWNERS)),
    Action("request_changes", role=_APPROVER, past=_("sent back for changes"),
           label=_("Ask for changes"), comment=Comment.REQUIRED, comment_arg="note",
           notice=Notice("changes_requested", Audience.OWNERS)),
    Action("revoke", role=_APPROVER, past=_("revoked"), label=_("Revoke"),
           comment=Comment.REQUIRED, comment_arg="note",
           confirm=_("The relay refuses this entry's mail from its next configuration on; "
                   "the owners are told."),
           notice=Notice("revoked", Audience.OWNERS, after_removal=True)),
    Action("recheck", role=_APPROVER, past=_("sent to the checks again"), label=_("Re-run checks")),
    Action("override_checks", role=_APPROVER, past=_("overridden"),
           label=_("Override failed checks"), comment=Comment.REQUIRED, comment_arg="reason",
           comment_noun=_("reason"), comment_label=_("Reason for overriding the failed checks"),
           notice=Notice("awaiting_approval", Audience.APPROVERS, arrival=True)),
    Action("recertify", role=_PERSON, past=_("recertified"),
           label=_("Recertify (still needed, unchanged)")),
    # Sending quota (docs/quotas.md): active entries start in the sandbox; the owners ask,
    # an approver of another team grants (the volume becomes the entry's daily quota) or
    # refuses with a reason. All three keep the entry active.
    Action("request_production", role=_PERSON, past=_("sent to approvers for production access"),
           label=_("Ask for production access"),
           data=("volume", "use_case", "bounce_handling"),
           notice=Notice("production_requested", Audience.APPROVERS)),
    Action("grant_production", role=_APPROVER, past=_("given production access"),
           label=_("Grant production access"), comment=Comment.OPTIONAL,
           notice=Notice("production_granted", Audience.OWNERS)),
    Action("refuse_production", role=_APPROVER, past=_("refused production access"),
           label=_("Refuse production access"), comment=Comment.REQUIRED,
           comment_noun=_("reason"), comment_label=_("Why production access is refused"),
           notice=Notice("production_refused", Audience.OWNERS)),
    # No text box; an API caller's comment goes to the note and the audit trail.
    Action("retry_provisioning", role=_APPROVER, past=_("sent to provisioning again"),
           label=_("Retry provisioning"), comment_arg="note"),
    # An ``error`` verdict mails ``checks_error`` instead (notifications.py).
    Action("checks_passed", role=_SYSTEM, past=_("passed on to approvers"),
           notice=Notice("awaiting_approval", Audience.APPROVERS, arrival=True)),
    Action("checks_failed", role=_SYSTEM, past=_("sent back by its checks"),
           notice=Notice("checks_failed", Audience.OWNERS)),
    # "You are live": functional accounts only (activation.activate), sent when the
    # account is in a relay config version AND in the relay-allow group.
    Action("activate", role=_SYSTEM, past=_("activated"),
           notice=Notice("live", Audience.OWNERS)),
    # the owners wait for it and only approvers can retry or reject: both are told
    Action("provisioning_failed", role=_SYSTEM, past=_("marked as failed to provision"),
           notice=Notice("provisioning_failed", Audience.OWNERS_AND_APPROVERS)),
    Action("supersede", role=_SYSTEM, past=_("superseded")),
    Action("expire", role=_SYSTEM, past=_("expired"),
           notice=Notice("expired", Audience.OWNERS, after_removal=True)),
)

# The actions inside a sentence (``Action.verb``: "Only approvers can %(doing)s."), marked
# here so makemessages extracts them; translated where the sentence is built.
VERBS: tuple[str, ...] = (
    _("submit"), _("withdraw"), _("approve"), _("reject"), _("request changes"), _("revoke"),
    _("recheck"), _("override checks"), _("recertify"), _("request production"),
    _("grant production"), _("refuse production"), _("retry provisioning"),
)

# What a person may ask for (the web and API endpoints, ``services.request_act``).
USER_ACTIONS: dict[str, Action] = {n: a for n, a in ACTIONS.items() if a.by_user}


# The quota transitions: the request page shows them in its "Sending quota" section, not
# among the lifecycle buttons.
PRODUCTION_ACTIONS: tuple[str, ...] = ("request_production", "grant_production",
                                       "refuse_production")

# The notices the relay config build that leaves the entry out sends (action -> mail kind).
AFTER_REMOVAL: dict[str, str] = {
    n: a.notice.kind for n, a in ACTIONS.items() if a.notice is not None and a.notice.after_removal
}
