"""The registrar's hot path compiled to C by mypyc, used only while it matches the sources.

Theory of operation. A REGISTER pair (challenge, then the answer) costs the registrar and
the UDP read loop about 71 µs of interpreted Python; compiled by mypyc from the very same
typed modules, about 33 µs (in-process, ``bench/sip_register.py``). ``scripts/setup`` runs
``scripts/build-accel``, which compiles ``MODULES`` into ``.build/accel/`` beside the
sources and writes a stamp: the hash of those modules' sources and of the interpreter that
built them. At import time ``appliance.sip`` asks ``search_path`` for its package path: the
build directory comes first when its stamp is the stamp of the sources now on disk, so an
edited module (or another Python) falls back to the interpreted sources on its own, never
to stale machine code.

The compiled code is the same Python, with mypyc's added strictness: arguments are checked
against their annotations at run time; instances of compiled classes take no new attributes
and their methods cannot be replaced; compiled callers call a module's functions directly,
and read its ``Final`` constants from C statics, so patching either changes nothing for them.
Tests therefore patch the fakes they pass in, or wrap an object, never a compiled one. The
test suite runs on whichever code is in use; ``APPLIANCE_ACCEL=0`` forces the sources, and
``tests/core/test_accel.py`` runs the REGISTER tests that way too.

Only native classes are fast. A NamedTuple is not one (its fields are looked up by name),
and the ``__init__`` the dataclass decorator writes runs interpreted: the classes built on
every REGISTER are therefore plain classes, or dataclasses with ``init=False`` and an
``__init__`` of their own (the two cost about a fifth of a compiled pair before).
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# scripts/install builds beside the installed tree and points the unit here with this variable.
BUILD = Path(os.environ.get("APPLIANCE_ACCEL_DIR") or ROOT / ".build" / "accel")
# The shared library of the group: appliance/sip/accel__mypyc*.so in BUILD.
GROUP = "appliance.sip.accel"
# The modules a plain REGISTER goes through (``UdpIntake``, ``FrontDoor.quick``), and what
# they lean on.
MODULES = (
    "appliance.sip.bindings",
    "appliance.sip.digest",
    "appliance.sip.frontdoor",
    "appliance.sip.guard",
    "appliance.sip.headers",
    "appliance.sip.register_view",
    "appliance.sip.registrar",
    "appliance.sip.tags",
    "appliance.sip.transaction_keys",
    "appliance.sip.transaction_table",
    "appliance.sip.udp_intake",
    "appliance.sip.uri",
)
DISABLE = "APPLIANCE_ACCEL"  # "0": run the interpreted sources even when a build matches


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def stamp() -> str:
    """The stamp a build of the sources now on disk, for this interpreter, carries."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version}\0{sysconfig.get_config_var('EXT_SUFFIX')}\0".encode())
    for module in MODULES:
        digest.update(f"{module}\0".encode())
        digest.update(source_path(module).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def built_stamp(build: Path = BUILD) -> str | None:
    try:
        return (build / "stamp").read_text().strip()
    except OSError:
        return None


def search_path(package: str, path: Sequence[str], build: Path = BUILD) -> list[str]:
    """PACKAGE's ``__path__`` (PATH, the sources'): with BUILD's copy of the package first when
    BUILD's stamp matches the sources and it is not disabled, so its modules load from there."""
    if os.environ.get(DISABLE) == "0":
        return list(path)
    compiled = build.joinpath(*package.split("."))
    if not compiled.is_dir() or built_stamp(build) != stamp():
        return list(path)
    return [str(compiled), *path]


def active() -> bool:
    """Whether this process runs the compiled modules: those of MODULES it has imported are
    all compiled (the search path gives all of them, or none)."""
    loaded = [module for module in map(sys.modules.get, MODULES) if module is not None]
    return bool(loaded) and all(_compiled(module.__file__) for module in loaded)


def _compiled(file: str | None) -> bool:
    return file is not None and not file.endswith(".py")


def describe() -> str:
    """One line for the start-up log: which registrar code runs, and why."""
    if active():
        return f"registrar: compiled hot path (mypyc, {BUILD})"
    if os.environ.get(DISABLE) == "0":
        return f"registrar: interpreted ({DISABLE}=0)"
    if built_stamp() is None:
        return f"registrar: interpreted (no compiled build in {BUILD})"
    return f"registrar: interpreted (the compiled build in {BUILD} is out of date)"
