"""The package's import graph: layered, without cycles, every deferred import explained.

Every module of ``requests_app`` and ``onboarding`` is parsed with ``ast`` (nothing is
imported), and each import of one of their modules becomes an edge: at module level,
inside ``if TYPE_CHECKING:``, and inside function bodies alike, because a cycle that an
import inside a function hides is still a cycle. Importing ``a.b.c`` also runs the
packages ``a.b`` and ``a``, so those are edges too (except the importer's own parents,
which are already running when it is).

Three rules:

* **No cycle.** The graph is a DAG.
* **No upward import.** ``LAYERS`` lists the layers, lowest first; a module imports its
  own layer and the ones below, never one above. A new module must be declared in a
  layer (an undeclared module fails the test, so its place is decided, not guessed).
* **No unexplained deferred import.** An import inside a function body (of any module,
  not only ours) needs a one-line reason, written as a ``# deferred: <why>`` comment on
  the import's own line or on the comment line(s) directly above it (one comment above
  a run of consecutive imports covers the run). Without a reason it belongs at the top
  of the module.

docs/architecture.md ("Module layers") describes the layers; this module is where they
are declared.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("requests_app", "onboarding")

# Lowest first. "x.*" is the module or package x and everything below it; a plain name
# is that module only.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Django-free engines: rules, DNS, the check engine, the relay renderer
    ("engines", (
        "requests_app",  # the package itself (empty)
        "requests_app.wording",  # Message: an English template and values, said later
        "requests_app.rules",
        "requests_app.actions",  # one declaration per transition (no imports from the app)
        "requests_app.dns",
        "requests_app.checks.*",
        "requests_app.postfix",
        "requests_app.relay_backend",
        "requests_app.artifacts_io",
        "requests_app.sender_policy",  # the sender rule the relay enforces and pages show
        "requests_app.policyd",  # the relay's policy service (runs without Django)
        "requests_app.relay_probe",  # the test-mail tool's checks (stdlib; the script)
        "requests_app.relay_chunks",  # content-defined cuts of relay config bodies
    )),
    ("models", (
        "requests_app.kinds",
        "requests_app.validators",
        "requests_app.models",
        "requests_app.relay_store",  # relay config files stored once by content hash
        "requests_app.migrations.*",
    )),
    # what every writer may use: errors, dispatch after commit, audit events, the outbox
    ("core", (
        "requests_app.exceptions",
        "requests_app.dispatch",
        "requests_app.bulk_sql",  # executemany inserts and updates (recording a batch)
        "requests_app.check_dispatch",  # one wake-up message per burst of submissions
        "requests_app.events",
        "requests_app.notifications",
        "requests_app.credential_keys",  # AES-GCM and link tokens (the outbox renders links)
        "requests_app.display",  # labels, JSON and IDN as people read them (pages, mails)
    )),
    # domain modules and the services that write (they call each other without cycles)
    ("domain", (
        "requests_app.checking",
        "requests_app.selectors",
        "requests_app.activation",  # active means usable: the one activation step
        "requests_app.accounts",  # one account per use case; host overlap warnings
        "requests_app.directory",
        "requests_app.relay",
        "requests_app.services",
        "requests_app.drift",
        "requests_app.recertification",
        "requests_app.snippets",
        "requests_app.dashboard",
        "requests_app.audit_export",  # the audit CSV: streamed, filtered, row-count trailer
        "requests_app.quotas",  # sandbox -> production access
        "requests_app.credentials",  # account passwords: issue, one-time link, rotation
        "requests_app.comments",  # the conversation on a request (thread, audit, mail)
        "requests_app.relay_test",  # renders the test-mail script of a request
        "requests_app.assignment",  # approvers claim and release requests ("assigned to me")
    )),
    ("tasks", (
        "requests_app.tasks",
        "requests_app.directory_tasks",
        "requests_app.credential_tasks",
    )),
    # front ends: web pages, JSON API, admin, management commands
    ("front", (
        "requests_app.params",
        "requests_app.forms",
        "requests_app.views",
        "requests_app.lists",  # list and queue parameters, age, CSV of the filtered view
        "requests_app.directory_views",
        "requests_app.credential_views",
        "requests_app.comment_views",  # the request page's comment form
        "requests_app.live_views",  # the status the checking page polls
        "requests_app.relay_views",
        "requests_app.relay_test_views",  # the test-mail script download
        "requests_app.urls",
        "requests_app.relay_urls",
        "requests_app.context_processors",
        "requests_app.templatetags.*",  # the display filters (a template builtin)
        "requests_app.admin",
        "requests_app.api.*",
        "requests_app.management.*",
    )),
    # start-up: app config, system checks, project settings, Celery app, URL root
    ("wiring", (
        "requests_app.apps",
        "requests_app.system_checks",
        "onboarding.*",
    )),
)

REASON = re.compile(r"#\s*deferred:\s*\S")


@dataclass(frozen=True)
class Edge:
    """One import of a package module by another."""

    source: str
    target: str
    line: int
    deferred: bool  # inside a function body

    def __str__(self) -> str:
        where = "in a function" if self.deferred else "at module level"
        return f"{self.source} -> {self.target} (line {self.line}, {where})"


@dataclass(frozen=True)
class Unexplained:
    """A function-body import without a ``# deferred:`` reason."""

    module: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.text}"


def package_modules(root: Path, packages: Sequence[str]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join(parts)] = (path, is_package)
    return modules


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             modules: Mapping[str, object]) -> set[str]:
    """The package modules an import statement runs (with their parent packages)."""
    named: set[str] = set()
    if isinstance(node, ast.Import):
        named = {alias.name for alias in node.names}
    else:
        base = _resolve_from(module, is_package, node)
        for alias in node.names:
            named.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    own_parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    found = set()
    for name in named:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            is_parent = i < len(parts)
            if candidate not in modules or candidate == module:
                continue
            if is_parent and candidate in own_parents:
                continue  # already running when this module runs
            found.add(candidate)
    return found


def _comments(source: str) -> dict[int, str]:
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    return comments


def _has_reason(node: ast.stmt, run_start: ast.stmt, lines: list[str],
                comments: Mapping[int, str]) -> bool:
    """A ``# deferred:`` comment on the statement's lines, or directly above its run."""
    end = node.end_lineno or node.lineno
    if any(REASON.search(comments.get(n, "")) for n in range(node.lineno, end + 1)):
        return True
    number = run_start.lineno - 1
    while number >= 1 and lines[number - 1].strip().startswith("#"):
        if REASON.search(lines[number - 1]):
            return True
        number -= 1
    return False


def _import_runs(body: Iterable[ast.stmt]) -> Iterable[tuple[ast.stmt, ast.stmt]]:
    """(import statement, first statement of its run of consecutive imports)."""
    start = None
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            start = start or statement
            yield statement, start
        else:
            start = None


def analyse(root: Path, packages: Sequence[str]) -> tuple[list[str], list[Edge],
                                                          list[Unexplained]]:
    """(modules, import edges between them, function-body imports without a reason)."""
    modules = package_modules(root, packages)
    edges: list[Edge] = []
    unexplained: list[Unexplained] = []
    for module, (path, is_package) in modules.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        lines = source.splitlines()
        comments = _comments(source)
        in_function: set[int] = set()
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                in_function.update(id(inner) for inner in ast.walk(function)
                                   if inner is not function)
        for block in ast.walk(tree):
            for field in ("body", "orelse", "finalbody"):
                body = getattr(block, field, None)
                if not isinstance(body, list):
                    continue
                for statement, start in _import_runs(body):
                    if id(statement) in in_function and not _has_reason(
                            statement, start, lines, comments):
                        unexplained.append(Unexplained(
                            module, statement.lineno, lines[statement.lineno - 1].strip()))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in sorted(_targets(module, is_package, node, modules)):
                    edges.append(Edge(module, target, node.lineno, id(node) in in_function))
    return sorted(modules), edges, sorted(unexplained, key=lambda u: (u.module, u.line))


def find_cycles(modules: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> int | None:
    """The index of the module's layer (the longest matching pattern wins)."""
    best: tuple[int, int] | None = None  # (pattern length, layer index)
    for number, (_name, patterns) in enumerate(layers):
        for pattern in patterns:
            prefix = pattern.removesuffix(".*")
            matches = (module == prefix or
                       (pattern.endswith(".*") and module.startswith(prefix + ".")))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), number)
    return None if best is None else best[1]


def upward_imports(edges: Iterable[Edge],
                   layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> list[str]:
    found = []
    for edge in edges:
        source, target = layer_of(edge.source, layers), layer_of(edge.target, layers)
        if source is not None and target is not None and target > source:
            found.append(f"{edge} imports up from {layers[source][0]!r} "
                         f"to {layers[target][0]!r}")
    return found


# --- the real tree ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> tuple[list[str], list[Edge], list[Unexplained]]:
    return analyse(ROOT, PACKAGES)


def test_every_module_of_the_package_is_declared_in_a_layer(tree):
    # given every module of requests_app and onboarding
    modules, _edges, _unexplained = tree
    # when each is looked up in the declared layers
    undeclared = [m for m in modules if layer_of(m) is None]
    # then none is missing (a new module is placed in a layer, in LAYERS above)
    assert "requests_app.services" in modules and "onboarding.celery" in modules
    assert undeclared == []


def test_the_import_graph_of_the_package_has_no_cycle(tree):
    # given the imports between the package's modules, module-level and deferred alike
    modules, edges, _unexplained = tree
    # when its strongly connected components are computed
    cycles = find_cycles(modules, edges)
    # then there are none
    details = [
        f"{' <-> '.join(cycle)}:\n    " + "\n    ".join(
            str(e) for e in edges if e.source in cycle and e.target in cycle)
        for cycle in cycles
    ]
    assert cycles == [], "import cycles:\n" + "\n".join(details)


def test_no_module_imports_from_a_layer_above_its_own(tree):
    # given the import edges
    _modules, edges, _unexplained = tree
    # when each is compared with the declared layers
    upward = upward_imports(edges)
    # then every import goes to the importer's layer or below
    assert upward == [], "\n".join(upward)


def test_every_import_inside_a_function_gives_its_reason(tree):
    # given the imports written inside function bodies
    _modules, _edges, unexplained = tree
    # then each has a "# deferred: <why>" comment (or it moves to the top of its module)
    assert unexplained == [], "\n".join(str(u) for u in unexplained)


# --- the checker finds what it must ----------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_hidden_in_a_function_body_is_found(tmp_path):
    # given two modules that import each other, one of them only inside a function
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    # deferred: avoids the cycle\n    from . import high\n",
        "pkg/high.py": "from .low import f\n",
    })
    # when the tree is analysed
    modules, edges, unexplained = analyse(tmp_path, ["pkg"])
    # then the cycle is reported although its reason is given
    assert find_cycles(modules, edges) == [["pkg.high", "pkg.low"]]
    assert unexplained == []
    assert [e.deferred for e in edges if e.source == "pkg.low"] == [True]


def test_a_function_body_import_without_a_reason_is_reported(tmp_path):
    # given deferred imports: one bare, one with a trailing reason, a run under one reason,
    # and a comment that is not a reason
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": (
            "def bare():\n    import json\n\n"
            "def trailing():\n    import json  # deferred: keeps start-up fast\n\n"
            "def run():\n    # deferred: keeps start-up fast\n"
            "    import json\n    import csv\n\n"
            "def other_comment():\n    # just a note\n    import csv\n"
        ),
    })
    # when the tree is analysed
    _modules, _edges, unexplained = analyse(tmp_path, ["pkg"])
    # then exactly the bare import and the one under a plain note are reported
    assert [(u.line, u.text) for u in unexplained] == [(2, "import json"), (14, "import csv")]


def test_an_import_from_a_higher_layer_is_reported(tmp_path):
    # given a low module that imports a high one (and a high one importing low: fine)
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .deep import x\n",
        "pkg/sub/deep.py": "x = 1\n",
        "pkg/low.py": "from pkg.sub.deep import x\n",
        "pkg/high.py": "from . import low\n",
    })
    layers = (("bottom", ("pkg", "pkg.low")), ("top", ("pkg.high", "pkg.sub.*")))
    # when the edges are compared with the layers
    _modules, edges, _unexplained = analyse(tmp_path, ["pkg"])
    found = upward_imports(edges, layers)
    # then the low module's import of the sub-package (and of its __init__) is reported
    assert sorted(f.split(" (")[0] for f in found) == ["pkg.low -> pkg.sub",
                                                         "pkg.low -> pkg.sub.deep"]
    assert layer_of("pkg.unknown", layers) is None
