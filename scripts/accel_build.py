"""Build the compiled registrar hot path (see appliance/accel.py); run by scripts/build-accel
and scripts/install.

    python scripts/accel_build.py [--force] [--root DIR] [--output DIR]
                                  [--python-executable PYTHON]

Compiles ``accel.MODULES`` of the tree in DIR (default: this checkout) with mypyc into a fresh
directory, then puts it in place of the output (default ``accel.BUILD``) with its stamp
written last, so a build cut short is never taken for a good one. The compiler's output goes
to ``<output>.log``. The running Python needs mypy (mypyc) and setuptools; the extension is
built for it, so it must be the Python the appliance runs on (a venv of it will do).
``--python-executable``: where mypy finds the appliance's own dependencies (aiohttp...), when
the running Python does not have them (scripts/install's throwaway build venv).
Exit status: 0 built or up to date, 1 not built (the appliance then runs interpreted).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import TextIO

CHECKOUT = Path(__file__).resolve().parent.parent


def build(root: Path, output: Path, python_executable: str | None, log: TextIO) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    from appliance import accel

    work = output.parent / f"{output.name}-work"
    fresh = output.parent / f"{output.name}.new"
    for directory in (work, fresh):
        shutil.rmtree(directory, ignore_errors=True)
    work.mkdir(parents=True)
    paths = [str(accel.source_path(module).relative_to(root)) for module in accel.MODULES]
    options = ["--config-file", str(root / "pyproject.toml"),
               "--cache-dir", str(work / "mypy-cache")]  # nothing left in the tree
    if python_executable:
        options += ["--python-executable", python_executable]
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        extensions = mypycify([*options, *paths], opt_level="3", group_name=accel.GROUP,
                              target_dir=str(work / "c"))
        setup(name="appliance-accel", packages=[], py_modules=[], ext_modules=extensions,
              script_args=["-q", "build_ext", "--build-lib", str(fresh),
                           "--build-temp", str(work / "obj")])
    (fresh / "stamp").write_text(accel.stamp() + "\n")
    shutil.rmtree(output, ignore_errors=True)
    fresh.rename(output)
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    parser.add_argument("--root", type=Path, default=CHECKOUT,
                        help="the tree holding appliance/ and pyproject.toml")
    parser.add_argument("--output", type=Path, default=None,
                        help="the build directory (default: accel.BUILD)")
    parser.add_argument("--python-executable", default=None,
                        help="the Python whose packages mypy reads (the appliance's venv)")
    args = parser.parse_args()
    root = args.root.resolve()
    os.chdir(root)  # mypy reads the sources and its config relative to the tree
    sys.path.insert(0, str(root))
    from appliance import accel

    output = (args.output or accel.BUILD).resolve()
    if not args.force and accel.built_stamp(output) == accel.stamp():
        return 0
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(f"build-accel: no C compiler ({compiler}): the registrar runs interpreted",
              file=sys.stderr)
        return 1
    include = sysconfig.get_path("include")
    if not (Path(include) / "Python.h").exists():
        print(f"build-accel: no Python headers ({include}/Python.h): the registrar runs "
              "interpreted", file=sys.stderr)
        return 1
    started = time.monotonic()
    log_path = output.parent / f"{output.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        try:
            build(root, output, args.python_executable, log)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure: interpreted
            print(f"build-accel: the build failed ({err}; see {log_path}): the registrar "
                  "runs interpreted", file=sys.stderr)
            return 1
    print(f"build-accel: {len(accel.MODULES)} modules compiled in "
          f"{time.monotonic() - started:.0f} s into {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
