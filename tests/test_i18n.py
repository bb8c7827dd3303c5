"""Languages: English, Norwegian Bokmål and German (docs/i18n.md).

Proven here: the catalogs are complete (every marked string translated, nothing fuzzy,
placeholders kept), the pure-Python compiler of ``dev.py`` builds the same catalogs as
GNU msgfmt, pages render in Bokmål and German from ``Accept-Language`` and from the
language switch with no English sentence of the page left, and form errors, flash
messages and mails come in the chosen language.
"""

from __future__ import annotations

import gettext
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import translation

import dev
from requests_app import validators
from requests_app.models import Notification
from requests_app.models import RequestState
from requests_app.notifications import render_notification
from tests.conftest import require
from tests.factories import RelayRequestFactory

ROOT = Path(__file__).resolve().parent.parent
LANGS = ("nb", "de")
# python-format (%(name)s, %s, %%), brace-format ({name}: the test-mail script) placeholders
PLACEHOLDER = re.compile(r"%\([a-z_]+\)[-#0 +]*\d*[sdiXxfr]|%%|%s|%d|\{[a-z_]+\}")


# --- the catalogs ---------------------------------------------------------------------


def _po_entries(path: Path) -> list[dict]:
    """Every entry of a .po file with its flags and strings (an independent reader, so
    the check does not trust ``dev.py``'s own parser)."""
    entries: list[dict] = []
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8").strip()):
        entry: dict = {"flags": [], "obsolete": False, "msgstr": {}, "msgid": None,
                       "msgid_plural": None, "msgctxt": None}
        field = None
        for line in block.splitlines():
            if line.startswith("#~"):
                entry["obsolete"] = True
            elif line.startswith("#,"):
                entry["flags"] = [f.strip() for f in line[2:].split(",")]
            elif line.startswith("#"):
                continue
            else:
                if not line.startswith('"'):
                    field, _, line = line.partition(" ")
                value = eval(line)  # noqa: S307 - a C string literal from our own .po file
                if field.startswith("msgstr"):
                    index = int(field[7:-1]) if "[" in field else 0
                    entry["msgstr"][index] = entry["msgstr"].get(index, "") + value
                else:
                    entry[field] = (entry[field] or "") + value
        entries.append(entry)
    return entries


def _catalog(lang: str) -> list[dict]:
    return [e for e in _po_entries(ROOT / "locale" / lang / "LC_MESSAGES" / "django.po")
            if e["msgid"]]


@pytest.mark.parametrize("lang", LANGS)
def test_every_entry_of_the_catalog_is_translated_and_none_is_fuzzy(lang: str) -> None:
    entries = _catalog(lang)
    assert len(entries) > 700
    untranslated = [e["msgid"] for e in entries
                    if not e["msgstr"] or not all(e["msgstr"].values())]
    fuzzy = [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    obsolete = [e["msgid"] for e in entries if e["obsolete"]]
    plural_forms = [e["msgid"] for e in entries
                    if e["msgid_plural"] is not None and sorted(e["msgstr"]) != [0, 1]]
    assert (untranslated, fuzzy, obsolete, plural_forms) == ([], [], [], [])


@pytest.mark.parametrize("lang", LANGS)
def test_translations_keep_every_placeholder_of_their_source(lang: str) -> None:
    """A lost %(pk)s or {host} would raise or print the wrong value at run time."""
    broken = []
    for e in _catalog(lang):
        sources = [e["msgid"], e["msgid_plural"] or e["msgid"]]
        for index, text in sorted(e["msgstr"].items()):
            source = sources[min(index, 1)]
            if sorted(PLACEHOLDER.findall(source)) != sorted(PLACEHOLDER.findall(text)):
                broken.append((e["msgid"], text))
    assert broken == []


@pytest.mark.parametrize("lang", LANGS)
def test_the_catalog_passes_gnu_msgfmt_check(lang: str) -> None:
    require(shutil.which("msgfmt") is not None, "GNU gettext's msgfmt (Debian: gettext)")
    po = ROOT / "locale" / lang / "LC_MESSAGES" / "django.po"
    done = subprocess.run(["msgfmt", "--check", "--statistics", "-o", "/dev/null", str(po)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "untranslated" not in done.stderr and "fuzzy" not in done.stderr, done.stderr


def test_every_string_marked_in_the_code_is_in_both_catalogs(
        tmp_path: Path, settings: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-extract the strings (makemessages into an empty folder) and find each one in the
    committed catalogs: a new string without its translation fails here, not in front of
    a Norwegian user.

    makemessages writes next to the sources it walks, so it walks links to them from a
    scratch folder: the committed catalogs are never touched.
    """
    require(shutil.which("xgettext") is not None, "GNU gettext's xgettext (Debian: gettext)")
    for name in ("requests_app", "templates", "onboarding"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    monkeypatch.chdir(tmp_path)
    call_command("makemessages", locale=["nb"], symlinks=True, no_obsolete=True,
                 verbosity=0)
    fresh = _po_entries(tmp_path / "locale" / "nb" / "LC_MESSAGES" / "django.po")
    extracted = {(e["msgctxt"], e["msgid"]) for e in fresh if e["msgid"]}
    for lang in LANGS:
        translated = {(e["msgctxt"], e["msgid"]) for e in _catalog(lang) if all(
            e["msgstr"].values())}
        assert sorted(extracted - translated, key=str) == [], lang


def _mo_catalog(data: bytes) -> dict:
    catalog = dict(gettext.GNUTranslations(io.BytesIO(data))._catalog)
    catalog.pop("", None)  # the header: msgfmt drops POT-Creation-Date, we keep it
    return catalog


def test_the_pure_python_compiler_builds_what_gnu_msgfmt_builds() -> None:
    """``dev.py`` compiles without GNU gettext (a fresh machine has only Python): ours
    and Django's own nb/de catalogs (contexts, plurals, fuzzy entries) come out the same."""
    require(shutil.which("msgfmt") is not None, "GNU gettext's msgfmt (Debian: gettext)")
    django_locale = Path(__import__("django").__file__).parent / "conf" / "locale"
    sources = [ROOT / "locale" / lang / "LC_MESSAGES" / "django.po" for lang in LANGS]
    sources += [django_locale / lang / "LC_MESSAGES" / "django.po" for lang in LANGS]
    for po in sources:
        ours = dev._mo_bytes(dev._po_entries(po))
        gnu = subprocess.run(["msgfmt", "-o", "-", str(po)], capture_output=True,
                             check=True).stdout
        assert _mo_catalog(ours) == _mo_catalog(gnu), po


def test_compiled_catalogs_are_rebuilt_when_their_source_is_newer(tmp_path: Path) -> None:
    po = tmp_path / "nb" / "LC_MESSAGES" / "django.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  'msgid "Log out"\nmsgstr "Logg ut"\n', encoding="utf-8")
    assert dev.compile_messages(tmp_path) == [po.with_suffix(".mo")]
    assert dev.compile_messages(tmp_path) == []  # up to date: nothing to do
    po.write_text(po.read_text().replace("Logg ut", "Logg av"), encoding="utf-8")
    mo = po.with_suffix(".mo")
    stamp = mo.stat().st_mtime - 10
    __import__("os").utime(mo, (stamp, stamp))
    assert dev.compile_messages(tmp_path) == [mo]
    assert _mo_catalog(mo.read_bytes()) == {"Log out": "Logg av"}


# --- pages ------------------------------------------------------------------------------


class _Text(HTMLParser):
    """What a person reads: text nodes and the labels of controls, not code or data."""

    SKIP = {"script", "style", "pre", "code", "textarea", "option"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        for name, value in attrs:
            if name in ("aria-label", "title", "placeholder", "data-confirm", "alt") and value:
                self.parts.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(" ".join(data.split()))


def visible_text(html: str) -> list[str]:
    parser = _Text()
    parser.feed(html)
    return parser.parts


def _sentences(parts: list[str], data: set[str]) -> set[str]:
    """Text nodes that read as English words (two or more words of letters), minus the
    request's own data: what a translation must change."""
    found = set()
    for part in parts:
        if any(value and value in part for value in data):
            continue
        words = re.findall(r"[A-Za-z]{2,}", part)
        if len(words) >= 2 and not re.fullmatch(r"[\w.@:/#+-]+", part):
            found.add(part)
    return found


@pytest.fixture
def pages(team, requester, approver, server_request):
    """The pages of both journeys, each with the client of who sees it."""
    queued = RelayRequestFactory(team=team, created_by=requester, fqdn="mx.example.org",
                                 state=RequestState.PENDING_APPROVAL, check_verdict="pass")
    live = RelayRequestFactory(account=True, team=team, created_by=requester,
                               state=RequestState.ACTIVE, check_verdict="pass")
    asker, decider = Client(), Client()
    asker.force_login(requester)
    decider.force_login(approver)
    data = {team.name, team.slug, requester.username, approver.username,
            server_request.purpose, server_request.fqdn, queued.fqdn, live.account_name,
            live.use_case, "Relaydesk",
            # names of programs and files: the same words in every language
            "Postfix sasl_passwd", "Python smtplib", "Node.js nodemailer"}
    return data, [
        (Client(), reverse("login")),
        (asker, reverse("requests:list")),
        (asker, reverse("requests:choose")),
        (asker, reverse("requests:create", args=["server"])),
        (asker, reverse("requests:create", args=["account"])),
        (asker, reverse("requests:detail", args=[server_request.pk])),
        (asker, reverse("requests:detail", args=[live.pk])),
        (decider, reverse("requests:detail", args=[live.pk])),
        (decider, reverse("requests:credential_overdue")),
        (decider, reverse("requests:queue")),
        (decider, reverse("requests:detail", args=[queued.pk])),
        (decider, reverse("requests:dashboard")),
        (decider, reverse("relay:versions")),
        (decider, reverse("requests:directory_todo")),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("lang", LANGS)
def test_every_page_reads_in_the_browsers_language_with_no_english_sentence_left(
        pages, lang: str) -> None:
    data, visits = pages
    leftovers = {}
    for client, url in visits:
        english = client.get(url, HTTP_ACCEPT_LANGUAGE="en")
        local = client.get(url, HTTP_ACCEPT_LANGUAGE=f"{lang},en;q=0.5")
        assert local.status_code == english.status_code == 200, url
        html = local.content.decode()
        assert f'<html lang="{lang}"' in html, url
        same = _sentences(visible_text(english.content.decode()), data) & set(
            visible_text(html))
        if same:
            leftovers[url] = sorted(same)
    assert leftovers == {}, "\n".join(
        f"{url}: {text!r}" for url, texts in leftovers.items() for text in texts)


@pytest.mark.django_db
def test_accept_language_picks_bokmal_and_german_and_falls_back_to_english(
        requester) -> None:
    client = Client()
    client.force_login(requester)
    url = reverse("requests:list")
    assert "Ny forespørsel" in client.get(url, HTTP_ACCEPT_LANGUAGE="nb-NO,nb;q=0.9").text
    assert "Neuer Antrag" in client.get(url, HTTP_ACCEPT_LANGUAGE="de-CH,de;q=0.9").text
    # a language the site does not offer: English
    english = client.get(url, HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9").text
    assert "New request" in english and '<html lang="en"' in english


@pytest.mark.django_db
def test_the_language_switch_overrides_the_browser_and_returns_to_the_page(
        requester) -> None:
    client = Client()
    client.force_login(requester)
    url = reverse("requests:list")
    page = client.get(url, HTTP_ACCEPT_LANGUAGE="en").text
    # the switch is on the page, without JavaScript: a form posting to set_language
    assert f'action="{reverse("set_language")}"' in page
    assert '<option value="nb" lang="nb">Norsk bokmål</option>' in page
    answer = client.post(reverse("set_language"), {"language": "de", "next": url},
                         HTTP_ACCEPT_LANGUAGE="en")
    assert answer.status_code == 302 and answer["Location"] == url
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "de"
    german = client.get(url, HTTP_ACCEPT_LANGUAGE="en").text
    assert "Neuer Antrag" in german and "New request" not in german
    assert '<option value="de" lang="de" selected>Deutsch</option>' in german
    # a language the site does not offer is ignored
    client.post(reverse("set_language"), {"language": "xx", "next": url})
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "de"


@pytest.mark.django_db
def test_the_login_page_switches_language_before_anyone_logs_in() -> None:
    page = Client().get(reverse("login"), HTTP_ACCEPT_LANGUAGE="nb").text
    assert "Språk" in page and "Language" not in page


# --- form errors, flash messages, mails --------------------------------------------------


@pytest.mark.django_db
def test_a_form_error_comes_in_bokmal(team, requester) -> None:
    client = Client()
    client.force_login(requester)
    answer = client.post(reverse("requests:create", args=["server"]), {
        "team": team.pk, "contact_email": "not an address", "fqdn": "app.example.org",
        "ipv4": "81.2.69.10", "purpose": "Ordrebekreftelser", "sender_domains": "example.org",
        "expected_daily_volume": "mange",
    }, HTTP_ACCEPT_LANGUAGE="nb")
    assert answer.status_code == 400  # the form again, with its errors
    page = answer.text
    assert "Forventet volum må være et heltall." in page
    assert "Kontakt-e-post: skriv inn en gyldig e-postadresse." in page
    assert "must be a whole number" not in page


@pytest.mark.django_db
def test_a_flash_message_comes_in_german(server_request, requester) -> None:
    client = Client()
    client.force_login(requester)
    url = reverse("requests:withdraw", args=[server_request.pk])
    answer = client.post(url, {"confirm": "1"}, HTTP_ACCEPT_LANGUAGE="de", follow=True)
    assert answer.status_code == 200
    assert f"Antrag #{server_request.pk} zurückgezogen." in answer.text


@pytest.mark.django_db
def test_a_mail_comes_in_the_mail_language(settings: object, team, requester) -> None:
    settings.RELAYDESK_MAIL_LANGUAGE = "nb"
    request = RelayRequestFactory(team=team, created_by=requester,
                                  state=RequestState.REJECTED)
    row = Notification.objects.create(
        request=request, kind="rejected", event_key=f"test:{request.pk}",
        recipients=["ops@example.org"],
        context={"actor": "bob", "comment": "Adressen er feil."})
    before = translation.get_language()
    message = render_notification(row)
    assert translation.get_language() == before  # the worker's own language is untouched
    assert message.subject == f"[Relaydesk] #{request.pk} app.example.org avvist"
    assert f"Forespørselen din #{request.pk} (app.example.org) ble avvist av bob." in message.body
    html = message.alternatives[0][0]
    assert f"Åpne forespørsel #{request.pk} i Relaydesk" in html


@pytest.mark.django_db
def test_mails_stay_in_english_by_default(team, requester) -> None:
    request = RelayRequestFactory(team=team, created_by=requester,
                                  state=RequestState.REJECTED)
    row = Notification.objects.create(
        request=request, kind="rejected", event_key=f"test:{request.pk}",
        recipients=["ops@example.org"], context={"actor": "bob", "comment": "Wrong."})
    with translation.override("de"):  # a German web request does not change the mail
        message = render_notification(row)
    assert message.subject == f"[Relaydesk] #{request.pk} app.example.org rejected"


def _server_form(team, user, **fields):
    """Post the new-server form as ``user`` with ``fields``; a function of the language
    (``Accept-Language``) returning the page's text."""
    client = Client()
    client.force_login(user)
    form = {"team": team.pk, "contact_email": "ops@example.org",
            "sender_domains": "example.org", "expected_daily_volume": "10", **fields}
    url = reverse("requests:create", args=["server"])
    return lambda language: client.post(url, form, HTTP_ACCEPT_LANGUAGE=language).text


@pytest.mark.django_db
def test_a_rule_of_the_engine_is_explained_in_german_and_in_english_as_before(
        team, requester) -> None:
    """``rules`` has no Django: its refusal carries an English template and its values,
    translated where the form shows it (``validators.rule_message``)."""
    post = _server_form(team, requester, fqdn="not a host!!", ipv4="81.2.69.10",
                        purpose="Auftragsbestätigungen")
    german = post("de")
    assert "Hostname &#x27;not a host!!&#x27; enthält ein Leerzeichen" in german
    assert "contains a space" not in german
    english = post("en")
    assert "host name &#x27;not a host!!&#x27; contains a space: a name is one word" in english


def _engine_warning(domain: str = "mail.example.com"):
    """A warn result with its fix, built by the check engine itself (no DNS needed): the
    sender domain is not on the (empty) approved list."""
    from requests_app.checking import check_config
    from requests_app.checks.fixes import with_fixes
    from requests_app.checks.sender import DOMAIN_POLICY

    config = check_config(include_db=False)
    result = DOMAIN_POLICY.judge(config, None, domain)
    return with_fixes([result], config)[0]


def _page_with_result(request, user, result):
    """Store the engine's ``result`` on ``request``; a client logged in as ``user`` and
    the request page's URL, to read it in a language."""
    from requests_app.models import CheckResult

    CheckResult.objects.create(request=request, check_id=result.id, subject=result.subject,
                               status=result.status, detail=result.detail,
                               evidence=result.evidence)
    client = Client()
    client.force_login(user)
    return client, reverse("requests:detail", args=[request.pk])


@pytest.mark.django_db
def test_a_check_detail_and_its_fix_note_read_in_bokmal_and_stay_english_by_default(
        server_request, requester) -> None:

    result = _engine_warning()
    assert result.detail.startswith("mail.example.com is not an approved sender domain")
    client, url = _page_with_result(server_request, requester, result)
    norwegian = client.get(url, HTTP_ACCEPT_LANGUAGE="nb").text
    assert ("mail.example.com er ikke et godkjent avsenderdomene: From/Return-Path blir "
            "skrevet om") in norwegian
    assert "ingen DNS-post endrer dette" in norwegian
    english = client.get(url, HTTP_ACCEPT_LANGUAGE="en").text
    assert result.detail in english
    assert result.evidence["fix"][0]["note"] in english.replace("&#x27;", "'")


def test_a_nested_check_message_is_translated_part_by_part() -> None:
    from requests_app import display
    from requests_app.checks.results import Message

    note = Message("; %(addresses)s not compared (refused by the address policy, "
                   "not looked up)", addresses="10.0.0.1")
    message = Message("%(fqdn)s has no A or AAAA record%(note)s", fqdn="a.example",
                      note=note)
    assert str(message) == ("a.example has no A or AAAA record; 10.0.0.1 not compared "
                            "(refused by the address policy, not looked up)")
    with translation.override("de"):
        shown = display.check_detail(str(message), {"message": message.as_dict()})
    assert shown == ("a.example hat keinen A- oder AAAA-Eintrag; 10.0.0.1 nicht verglichen "
                     "(von der Adressrichtlinie abgelehnt, nicht abgefragt)")
    # a result stored before messages existed, or a broken one, reads as its English
    assert display.check_detail("old text", {}) == "old text"
    broken = {"message": {"text": "%(missing)s", "args": {}}}
    assert display.check_detail("old text", broken) == "old text"


@pytest.mark.django_db
def test_the_checks_failed_mail_says_the_detail_and_fix_in_the_mail_language(
        settings: object, team, requester) -> None:
    settings.RELAYDESK_MAIL_LANGUAGE = "nb"
    result = _engine_warning()
    request = RelayRequestFactory(team=team, created_by=requester,
                                  state=RequestState.NEEDS_CHANGES)
    row = Notification.objects.create(
        request=request, kind="checks_failed", event_key=f"test:{request.pk}",
        recipients=["ops@example.org"],
        context={"actor": "", "comment": "", "verdict": "fail", "failing_checks": [
            {"check_id": result.id, "subject": result.subject, "status": result.status,
             "detail": result.detail, "fix": result.evidence["fix"],
             "message": result.evidence["message"]}]})
    body = render_notification(row).body
    assert "er ikke et godkjent avsenderdomene" in body
    assert "ingen DNS-post endrer dette" in body


# The address policy's rulings (``rules.judge_address``): stored English as before, said
# in the reader's language. The English is today's exact text, byte for byte.
ADDRESS_RULINGS = {
    "127.0.0.1": (
        "127.0.0.1 is a loopback address; only a global host address can be allowed",
        "127.0.0.1 er en loopback-adresse; bare en global vertsadresse kan tillates",
        "127.0.0.1 ist eine Loopback-Adresse; nur eine globale Host-Adresse kann "
        "zugelassen werden"),
    "192.0.2.1": (
        "192.0.2.1 is a documentation address (TEST-NET-1); only a global host address "
        "can be allowed",
        "192.0.2.1 er en dokumentasjonsadresse (TEST-NET-1); bare en global vertsadresse "
        "kan tillates",
        "192.0.2.1 ist eine Dokumentationsadresse (TEST-NET-1); nur eine globale "
        "Host-Adresse kann zugelassen werden"),
    "10.0.0.1": (
        "10.0.0.1 is private (RFC 1918); private addresses are not allowed",
        "10.0.0.1 er privat (RFC 1918); private adresser er ikke tillatt",
        "10.0.0.1 ist privat (RFC 1918); private Adressen sind nicht zugelassen"),
}


@pytest.mark.parametrize("address", sorted(ADDRESS_RULINGS))
def test_an_address_policy_result_reads_in_bokmal_and_german_and_stores_todays_english(
        address: str) -> None:
    from requests_app import display
    from requests_app.checks import CheckConfig
    from requests_app.checks.policy import check_address

    english, bokmal, german = ADDRESS_RULINGS[address]
    result = check_address(address, CheckConfig())
    assert (result.status, result.detail) == ("fail", english)
    assert result.evidence["message"]["args"]["address"] == address
    for lang, expected in (("nb", bokmal), ("de", german), ("en", english)):
        with translation.override(lang):
            assert display.check_detail(result.detail, result.evidence) == expected, lang


def test_the_other_address_rulings_are_translated_and_keep_their_english() -> None:
    from requests_app import display
    from requests_app.checks import CheckConfig
    from requests_app.checks.policy import check_address

    cases = [  # (address, config, English as before, German)
        ("10.0.0.1", CheckConfig(allow_private=True),
         "10.0.0.1 is private (RFC 1918), allowed by RELAY_ALLOW_PRIVATE",
         "10.0.0.1 ist privat (RFC 1918), zugelassen durch RELAY_ALLOW_PRIVATE"),
        ("192.0.2.9", CheckConfig(lab_networks=("192.0.2.0/28",)),
         "inside lab network 192.0.2.0/28 (RELAY_LAB_NETWORKS)",
         "innerhalb des Labornetzes 192.0.2.0/28 (RELAY_LAB_NETWORKS)"),
        ("0.0.0.1", CheckConfig(),
         "0.0.0.1 is in 'this network' (0/8); only a global host address can be allowed",
         "0.0.0.1 ist in „diesem Netz“ (0/8); nur eine globale Host-Adresse kann "
         "zugelassen werden"),
        ("2001:db8::1", CheckConfig(),
         "2001:db8::1 is a documentation address; only a global host address can be "
         "allowed",
         "2001:db8::1 ist eine Dokumentationsadresse; nur eine globale Host-Adresse kann "
         "zugelassen werden"),
        ("10.0.0.0/8", CheckConfig(),
         "'10.0.0.0/8' is a prefix; give single host addresses",
         "'10.0.0.0/8' ist ein Präfix; geben Sie einzelne Host-Adressen an"),
    ]
    for address, config, english, german in cases:
        result = check_address(address, config)
        assert result.detail == english
        with translation.override("de"):
            assert display.check_detail(result.detail, result.evidence) == german, address


@pytest.mark.django_db
def test_the_request_page_says_an_address_refusal_in_german_and_english_as_before(
        server_request, requester) -> None:
    from requests_app.checks import CheckConfig
    from requests_app.checks.policy import check_address

    result = check_address("127.0.0.1", CheckConfig())
    client, url = _page_with_result(server_request, requester, result)
    german = client.get(url, HTTP_ACCEPT_LANGUAGE="de").text
    assert ADDRESS_RULINGS["127.0.0.1"][2] in german
    assert ADDRESS_RULINGS["127.0.0.1"][0] not in german  # (the evidence JSON keeps the template)
    assert ADDRESS_RULINGS["127.0.0.1"][0] in client.get(url, HTTP_ACCEPT_LANGUAGE="en").text


@pytest.mark.django_db
def test_a_refused_address_on_the_form_is_explained_in_bokmal(team, requester) -> None:
    post = _server_form(team, requester, fqdn="mail.example.org", ipv4="127.0.0.1",
                        purpose="Ordrebekreftelser")
    norwegian = post("nb")
    assert f"Adressepolicy: {ADDRESS_RULINGS['127.0.0.1'][1]}." in norwegian
    english = post("en")
    assert f"Address policy: {ADDRESS_RULINGS['127.0.0.1'][0]}." in english


@pytest.mark.django_db
def test_the_api_refuses_an_address_in_the_language_of_accept_language(team, requester) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(requester)
    payload = {"kind": "server", "team": team.slug, "fqdn": "app.example.org",
               "ipv4": ["192.0.2.1"], "purpose": "Order confirmations",
               "contact_email": "ops@example.org", "sender_domains": ["example.org"],
               "expected_daily_volume": 500}
    german = client.post("/api/requests/", payload, format="json", HTTP_ACCEPT_LANGUAGE="de")
    assert german.status_code == 400, german.content
    assert f"Adressrichtlinie: {ADDRESS_RULINGS['192.0.2.1'][2]}." in str(german.json())
    english = client.post("/api/requests/", payload, format="json", HTTP_ACCEPT_LANGUAGE="en")
    assert f"Address policy: {ADDRESS_RULINGS['192.0.2.1'][0]}." in str(english.json())


def test_a_message_with_a_list_of_clauses_and_values_reads_in_both_languages():
    from requests_app.wording import Message

    listed = Message("%(items)s", items=[Message("a loopback address"), 3, None])
    assert str(listed) == "a loopback address; 3; None"
    with translation.override("de"):
        assert validators.message_text(listed).endswith("; 3; None")
