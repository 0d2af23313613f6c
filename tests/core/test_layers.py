"""The layering rule of style.md §3.1, checked on the imports of every module (an `ast` walk,
no import executed): protocol cores do no I/O, the API never reaches the store or a driver,
nobody imports a composition root, and pjsua2 stays in the media worker processes."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"

# L0: data and pure protocol engines (bytes/lines in, events out, the clock passed in).
CORE = {
    "appliance.addresses", "appliance.config", "appliance.errors", "appliance.models",
    "appliance.queries",
    "appliance.timefmt", "appliance.passwords",
    "appliance.sip.message", "appliance.sip.headers", "appliance.sip.uri",
    "appliance.sip.framing", "appliance.sip.transaction", "appliance.sip.digest",
    "appliance.sip.bindings", "appliance.sip.guard", "appliance.sip.errors",
    "appliance.sip.wire", "appliance.sip.dialogs", "appliance.sip.register_view",
    "appliance.sip.proxy_ports", "appliance.sip.forwarding", "appliance.sip.routeset",
    "appliance.sip.deadlines", "appliance.sip.transaction_keys", "appliance.sip.hop",
    "appliance.sip.transaction_table", "appliance.sip.keepalive",
    "appliance.sip.ping_schedule", "appliance.sip.ended", "appliance.sip.tags",
    "appliance.gsm.pdu", "appliance.gsm.at", "appliance.gsm.urc", "appliance.gsm.alphabet",
    "appliance.gsm.errors", "appliance.gsm.state",
    "appliance.rcml.verbs", "appliance.rcml.parse", "appliance.rcml.interpreter",
    "appliance.media.engine", "appliance.media.protocol", "appliance.media.dtmf",
}
# What a core module may not import: I/O, threads, clocks, logging and third-party drivers.
IO_MODULES = {"asyncio", "socket", "selectors", "threading", "sqlite3", "subprocess", "time",
              "logging", "aiohttp", "serial", "sqlite_utils", "pjsua2", "gpiozero", "os"}
# The one core module that may use os: sip.tags reads os.urandom (randomness, as `secrets`
# does, not I/O) and resets its pool in a forked child (os.register_at_fork).
CORE_IO = {"appliance.sip.tags": {"os"}}
# Third-party packages a core module may use, each in one place only.
CORE_THIRD_PARTY = {"appliance.rcml.parse": {"defusedxml"}, "appliance.media.dtmf": {"numpy"}}
# What was split out of sip.proxy: the proxy owns these (collaborators, ports, pure rules), so
# none of them may import it back (no cycle, no re-export through the proxy).
PROXY_PARTS = {
    "appliance.sip.proxy_ports", "appliance.sip.forwarding", "appliance.sip.routeset",
    "appliance.sip.records", "appliance.sip.proxy_auth", "appliance.sip.deadlines",
    "appliance.sip.responses", "appliance.sip.cancel", "appliance.sip.in_dialog",
    "appliance.sip.messenger", "appliance.sip.ended",
}
# What was split out of sip.transaction, in import order: each imports only those before it
# (the machines know their table through a Protocol, so there is no cycle).
TRANSACTION_PARTS = ["appliance.sip.transaction_keys", "appliance.sip.hop",
                     "appliance.sip.transaction", "appliance.sip.transaction_table"]
ROOTS = {"appliance.app", "appliance.cli", "appliance.__main__",
         "appliance.media.worker.__main__"}
WORKER = "appliance.media.worker"
WORKER_MAY_IMPORT = {"appliance.errors", "appliance.media.protocol", "appliance.media.dtmf"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def imports(source: str, module: str, *, package: bool = False) -> set[str]:
    """Every module SOURCE (the text of MODULE) imports, at any depth; ``from a.b import c``
    gives a.b and a.b.c, since c may be a module."""
    found: set[str] = set()
    here = module if package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(p): imports(p.read_text(), module_name(p), package=p.name == "__init__.py")
           for p in sorted(PACKAGE.rglob("*.py"))}


def top(name: str) -> str:
    return name.split(".")[0]


def ours(names: set[str]) -> set[str]:
    """The appliance modules among NAMES (names of classes and functions dropped)."""
    return {n for n in names if n in MODULES}


def test_the_module_list_is_complete() -> None:
    missing = (CORE | ROOTS) - MODULES.keys()
    assert not missing, f"listed here but not in the package: {sorted(missing)}"


@pytest.mark.parametrize("module", sorted(CORE))
def test_core_modules_import_no_io_and_nothing_above_them(module: str) -> None:
    names = MODULES[module]
    io = {n for n in names if top(n) in IO_MODULES} - CORE_IO.get(module, set())
    assert not io, f"{module} imports {sorted(io)}: protocol code does no I/O (style.md §3.1)"
    above = ours(names) - CORE - {"appliance", "appliance.sip", "appliance.gsm",
                                  "appliance.rcml", "appliance.media"}
    assert not above, f"{module} imports {sorted(above)}, which are not core modules"
    third_party = {top(n) for n in names
                   if top(n) not in sys.stdlib_module_names and top(n) != "appliance"}
    assert third_party <= CORE_THIRD_PARTY.get(module, set()), \
        f"{module} imports {sorted(third_party)}"


def test_what_was_split_out_of_the_proxy_does_not_import_it() -> None:
    assert PROXY_PARTS <= MODULES.keys(), sorted(PROXY_PARTS - MODULES.keys())
    bad = sorted(module for module in PROXY_PARTS if "appliance.sip.proxy" in MODULES[module])
    assert not bad, f"{bad} import sip.proxy, which owns them"


def test_what_was_split_out_of_the_transactions_imports_only_what_comes_before_it() -> None:
    assert set(TRANSACTION_PARTS) <= MODULES.keys(), sorted(set(TRANSACTION_PARTS) - MODULES.keys())
    bad = {module: sorted(MODULES[module] & set(TRANSACTION_PARTS[at:]))
           for at, module in enumerate(TRANSACTION_PARTS)
           if MODULES[module] & set(TRANSACTION_PARTS[at:])}
    assert not bad, f"{bad}: the transaction modules would import each other in a cycle"


def test_the_api_talks_to_services_never_to_the_store_or_a_driver() -> None:
    bad = {}
    for module, names in MODULES.items():
        if not module.startswith("appliance.api"):
            continue
        reached = {n for n in names if top(n) in {"sqlite3", "sqlite_utils", "serial", "pjsua2"}
                   or n.startswith(("appliance.store", "appliance.sip.transport",
                                    "appliance.gsm.modem", "appliance.media.client",
                                    "appliance.media.supervisor", "appliance.platform"))}
        if reached:
            bad[module] = sorted(reached)
    assert not bad, bad


def test_nothing_imports_a_composition_root() -> None:
    bad = {module: sorted(MODULES[module] & ROOTS) for module in MODULES
           if module not in ROOTS and MODULES[module] & ROOTS}
    assert not bad, bad


def test_pjsua2_stays_in_the_media_worker() -> None:
    bad = [module for module, names in MODULES.items()
           if "pjsua2" in {top(n) for n in names} and not module.startswith(WORKER)]
    assert not bad, f"the main process must never import pjsua2: {bad}"


def test_worker_code_imports_only_its_own_modules_and_the_media_protocol() -> None:
    bad = {}
    for module, names in MODULES.items():
        if not module.startswith(WORKER):
            continue
        outside = {n for n in ours(names) if not n.startswith(WORKER)} - WORKER_MAY_IMPORT \
            - {"appliance", "appliance.media"}
        if outside:
            bad[module] = sorted(outside)
    assert not bad, bad


def test_the_walk_finds_imports_where_they_hide() -> None:
    """Nested in a function, relative, or a module in a ``from`` list: all are seen, so the
    checks above can fail."""
    source = ("from .headers import Via\n"
              "def later():\n"
              "    import asyncio\n"
              "    from .. import store\n")
    assert imports(source, "appliance.sip.fake") == {
        "appliance.sip.headers", "appliance.sip.headers.Via", "asyncio", "appliance",
        "appliance.store"}
