"""factory_boy factories: a request in any state, with teams and users to match."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from requests_app.models import APPROVERS_GROUP
from requests_app.models import AUDITORS_GROUP
from requests_app.models import Membership
from requests_app.models import RelayRequest
from requests_app.models import RequestKind
from requests_app.models import RequestState
from requests_app.models import Team
from requests_app.models import content_fingerprint

PASSWORD = "s3cret-pass"  # noqa: S105 - test-only


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@people.example.org")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def groups(self, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
        for name in extracted or []:
            self.groups.add(Group.objects.get_or_create(name=name)[0])
        self.save()


class ApproverFactory(UserFactory):
    username = factory.Sequence(lambda n: f"approver{n}")

    @factory.post_generation
    def groups(self, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
        self.groups.add(Group.objects.get_or_create(name=APPROVERS_GROUP)[0])
        self.save()


class AuditorFactory(UserFactory):
    username = factory.Sequence(lambda n: f"auditor{n}")

    @factory.post_generation
    def groups(self, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
        self.groups.add(Group.objects.get_or_create(name=AUDITORS_GROUP)[0])
        self.save()


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"team{n}")
    name = factory.LazyAttribute(lambda t: f"Team {t.slug}")
    contact_email = factory.LazyAttribute(lambda t: f"{t.slug}@teams.example.org")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)


def member_of(team: Team, **kwargs: object) -> object:
    user = UserFactory(**kwargs)
    Membership.objects.create(team=team, user=user)
    return user


class RelayRequestFactory(factory.django.DjangoModelFactory):
    """A server request that passes every check against the test zone (``tests/zones``).

    ``state`` can be set directly: factories build fixtures, not workflow history, so
    they bypass the protected FSM field by writing the column. A request given a
    ``check_verdict`` gets the fingerprint of its own content, as if the checks had run
    on it; pass ``checks_current=False`` for a verdict of other (earlier) content.
    """

    class Meta:
        model = RelayRequest

    kind = RequestKind.SERVER
    team = factory.SubFactory(TeamFactory)
    created_by = factory.LazyAttribute(lambda o: member_of(o.team))
    contact_email = "ops@example.org"
    sender_domains = factory.LazyFunction(lambda: ["example.org"])
    expected_daily_volume = 100
    fqdn = "app.example.org"
    ipv4 = factory.LazyFunction(lambda: ["81.2.69.10"])
    ipv6 = factory.LazyFunction(lambda: ["2a02:898:0:20::10"])
    purpose = "Order confirmations"

    class Params:
        account = factory.Trait(
            kind=RequestKind.ACCOUNT,
            fqdn="",
            ipv4=factory.LazyFunction(list),
            ipv6=factory.LazyFunction(list),
            purpose="",
            account_name=factory.Sequence(lambda n: f"svc-app{n}"),
            use_case="Password reset mails",
            tls_mode="starttls",
            sender_addresses=factory.LazyFunction(lambda: ["noreply@example.org"]),
        )

    @classmethod
    def _create(cls, model_class: type, *args: object, **kwargs: object) -> RelayRequest:
        state = kwargs.pop("state", RequestState.DRAFT)
        current = kwargs.pop("checks_current", True)
        obj = super()._create(model_class, *args, **kwargs)
        columns: dict[str, object] = {}
        if obj.check_verdict and current and not obj.checked_fingerprint:
            columns["checked_fingerprint"] = content_fingerprint(obj)
        if state != RequestState.DRAFT:
            columns["state"] = state
        if columns:
            RelayRequest.objects.filter(pk=obj.pk).update(**columns)
            obj.refresh_from_db()
        return obj
