"""Run Debian's real OpenLDAP ``slapd`` on loopback, for the directory provisioning tests.

Why a real server: the provisioner's promises (a member is added once, removing an absent
member is not an error, "no such object" and "insufficient access" are permanent, a closed
port is transient) are answers that only a real LDAP server gives with real result codes.
A mock would only repeat our own assumptions about them.

:class:`SlapdInstance` writes a throw-away ``cn=config`` (``slapadd -n0`` of a generated
LDIF: schema core/cosine/nis/inetorgperson, one ``mdb`` database for ``dc=example,dc=org``)
and seeds the data (``slapadd -n1``) before ``slapd`` starts, so no step needs a network
round trip or a running server. ``slapd`` runs in the foreground (``-d 0``) as a child of
the test process, listening only on ``ldap://127.0.0.1:<free port>/``
(:attr:`url` omits the trailing slash, which ldap3's ``Server`` refuses); :meth:`stop` kills
that pid and :meth:`start` brings it back on the same port with the same data, which is
how the tests simulate a directory outage.

Seeded entries (see :data:`SEED_LDIF`): ``ou=services``, ``ou=groups``, the relay-allow
group ``cn=smtprelayallow,ou=groups`` (``groupOfNames`` needs one ``member``, so it holds a
placeholder), service accounts ``uid=svc-billing`` and ``uid=svc-alerts``, a
``cn=provisioner`` that may write the group's ``member`` attribute and the service
accounts' ``userPassword`` (issue mode sets and rotates their passwords) and nothing else, and a
``cn=reader`` that may only read (to provoke "insufficient access").

Skips the calling test when ``slapd``/``slapadd`` are missing, or fails it when
``RELAYDESK_REQUIRE_TOOLS=1`` (as in CI), so a missing install step cannot hide behind a
green run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import require
from tests.support.daemon import ForegroundDaemon

__all__ = (
    "BASE_DN",
    "GROUP_DN",
    "PLACEHOLDER_DN",
    "PROVISIONER_DN",
    "PROVISIONER_PASSWORD",
    "READER_DN",
    "READER_PASSWORD",
    "ROOT_DN",
    "ROOT_PASSWORD",
    "SEED_LDIF",
    "SlapdInstance",
    "free_port",
    "require_slapd",
)

BASE_DN = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "root-secret"  # noqa: S105 - throw-away test directory
GROUP_DN = f"cn=smtprelayallow,ou=groups,{BASE_DN}"
PLACEHOLDER_DN = f"cn=placeholder,{BASE_DN}"
PROVISIONER_DN = f"cn=provisioner,{BASE_DN}"
PROVISIONER_PASSWORD = "prov-secret"  # noqa: S105 - throw-away test directory
READER_DN = f"cn=reader,{BASE_DN}"
READER_PASSWORD = "read-secret"  # noqa: S105 - throw-away test directory
ACCOUNT_DN_TEMPLATE = f"uid={{account}},ou=services,{BASE_DN}"

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_SCHEMA_DIR = Path("/etc/ldap/schema")
_MODULE_DIR = Path("/usr/lib/ldap")

# Plain-text passwords are fine here: the directory lives for one test session on loopback.
_CONFIG_LDIF = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {run}/slapd.pid
olcArgsFile: {run}/slapd.args
olcLogLevel: none

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {modules}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file://{schema}/core.ldif

include: file://{schema}/cosine.ldif

include: file://{schema}/nis.ldif

include: file://{schema}/inetorgperson.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {data}
olcSuffix: {base}
olcRootDN: {root_dn}
olcRootPW: {root_pw}
olcDbMaxSize: 16777216
olcAccess: {{0}}to dn.subtree="ou=services,{base}" attrs=userPassword
  by dn.exact="{provisioner}" write by anonymous auth by * none
olcAccess: {{1}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{2}}to dn.exact="{group}" attrs=member by dn.exact="{provisioner}" write by users read
olcAccess: {{3}}to * by users read by * none
"""

SEED_LDIF = f"""\
dn: {BASE_DN}
objectClass: top
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=services,{BASE_DN}
objectClass: organizationalUnit
ou: services

dn: ou=groups,{BASE_DN}
objectClass: organizationalUnit
ou: groups

dn: {PLACEHOLDER_DN}
objectClass: organizationalRole
cn: placeholder
description: keeps groupOfNames non-empty (member is a MUST attribute)

dn: {GROUP_DN}
objectClass: groupOfNames
cn: smtprelayallow
description: accounts allowed to authenticate to the SMTP relay
member: {PLACEHOLDER_DN}

dn: {PROVISIONER_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: provisioner
userPassword: {PROVISIONER_PASSWORD}

dn: {READER_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: {READER_PASSWORD}

dn: uid=svc-billing,ou=services,{BASE_DN}
objectClass: account
objectClass: simpleSecurityObject
uid: svc-billing
userPassword: not-used

dn: uid=svc-alerts,ou=services,{BASE_DN}
objectClass: account
objectClass: simpleSecurityObject
uid: svc-alerts
userPassword: not-used
"""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))


def require_slapd() -> tuple[str, str]:
    """Paths of ``slapd`` and ``slapadd``, or skip (locally) / fail (CI) the test."""
    slapd, slapadd = _which("slapd"), _which("slapadd")
    require(
        slapd is not None and slapadd is not None and (_MODULE_DIR / "back_mdb.so").exists(),
        "OpenLDAP slapd not installed (apt-get install slapd ldap-utils)",
    )
    assert slapd is not None and slapadd is not None  # for type checkers; require() skipped
    return slapd, slapadd


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (slapd binds it itself, so there is a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SlapdInstance(ForegroundDaemon):
    """A private slapd on ``127.0.0.1:<port>`` with a temporary config and database."""

    name = "slapd"
    tail_lines = 20

    base_dn = BASE_DN
    group_dn = GROUP_DN
    account_dn_template = ACCOUNT_DN_TEMPLATE
    root_dn = ROOT_DN
    root_password = ROOT_PASSWORD
    bind_dn = PROVISIONER_DN
    bind_password = PROVISIONER_PASSWORD

    def __init__(self, *, start_timeout: float = 10.0) -> None:
        self.slapd, self.slapadd = require_slapd()
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="relaydesk-slapd-")
        self.root = Path(self._tmp.name)
        self.config_dir = self.root / "slapd.d"
        self.data_dir = self.root / "data"
        self.run_dir = self.root / "run"
        super().__init__(log_path=self.root / "slapd.log", start_timeout=start_timeout)
        self._build()

    # --- setup -------------------------------------------------------------------------

    def _slapadd(self, *args: str, ldif: str) -> None:
        source = self.root / f"slapadd-{args[0].lstrip('-')}.ldif"
        source.write_text(ldif)
        result = subprocess.run(
            [self.slapadd, *args, "-F", str(self.config_dir), "-l", str(source)],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(f"slapadd {' '.join(args)} failed: {result.stderr.strip()}")

    def _build(self) -> None:
        for directory in (self.config_dir, self.data_dir, self.run_dir):
            directory.mkdir(mode=0o700)
        config = _CONFIG_LDIF.format(
            run=self.run_dir,
            modules=_MODULE_DIR,
            schema=_SCHEMA_DIR,
            data=self.data_dir,
            base=BASE_DN,
            root_dn=ROOT_DN,
            root_pw=ROOT_PASSWORD,
            group=GROUP_DN,
            provisioner=PROVISIONER_DN,
        )
        self._slapadd("-n0", ldif=config)
        self._slapadd("-n1", ldif=SEED_LDIF)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> SlapdInstance:
        """Start slapd (again) on the same port and wait until it accepts connections.

        :meth:`stop` kills this pid and waits for it, so the port is closed afterwards.
        """
        if self.running:
            return self

        def listening() -> bool:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True

        self._spawn([self.slapd, "-d", "0", "-F", str(self.config_dir), "-h", f"{self.url}/"],
                    ready=listening, waiting_for=f"listen on {self.url}")
        return self

    def close(self) -> None:
        """Stop slapd and delete its config, database and log."""
        super().close()
        self._tmp.cleanup()
