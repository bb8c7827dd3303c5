"""A sentence kept as its English template and values, for Django-free modules.

``rules.py`` and the check engine (``checks/``) have no Django, yet what they say reaches
people in three languages. They say it as a :class:`Message`: ``str()`` is the English
sentence they have always produced (stored, logged, compared), and the template with its
values lets the layer that has translations say it in the reader's language
(``display.check_detail`` for stored results, ``validators.message_text`` at the form and
serializer boundary; docs/i18n.md). It lives here, below both, so ``rules.py`` can use
it without importing the check engine (which imports ``rules.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

__all__ = ["Message", "Text", "_", "message_dict"]


def _(text: str) -> str:
    """Mark a message template for makemessages (gettext_noop): no Django here, the
    display layer translates (``display.check_detail``, docs/i18n.md)."""
    return text


@dataclass(frozen=True)
class Message:
    """A sentence as an English template and its values, as ``rules.RuleError`` keeps one.

    ``str()`` is the English sentence the engine has always stored (``detail``, a fix's
    ``note``); :meth:`as_dict` is what is stored beside it so a page or a mail can say it
    in the reader's language. A value may itself be a :class:`Message` (a clause that is
    words, not data) or a list of them (joined with "; "), translated in turn.
    """

    template: str
    args: dict[str, Any] = field(default_factory=dict)

    def __init__(self, template: str, **args: Any) -> None:
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "args", args)

    def __str__(self) -> str:
        return self.say(_)

    def say(self, translate: Callable[[str], str]) -> str:
        """The sentence with each template (this one's, a nested message's) passed through
        ``translate``: ``str()`` keeps the English, a Django layer passes ``gettext``. A
        list of messages reads as their sentences joined with "; "."""
        return translate(self.template) % {k: _said(v, translate) for k, v in self.args.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.template, "args": {k: message_dict(v) for k, v in self.args.items()}}


Text = str | Message


def _said(value: Any, translate: Callable[[str], str]) -> Any:
    if isinstance(value, Message):
        return value.say(translate)
    if isinstance(value, list | tuple) and any(isinstance(v, Message) for v in value):
        return "; ".join(str(_said(v, translate)) for v in value)
    return value


def message_dict(value: Any) -> Any:
    """``value`` as stored in evidence: a :class:`Message` as its dict, a list of them as a
    list of dicts, anything else as it is."""
    if isinstance(value, Message):
        return value.as_dict()
    if isinstance(value, list | tuple) and any(isinstance(v, Message) for v in value):
        return [message_dict(v) for v in value]
    return value
