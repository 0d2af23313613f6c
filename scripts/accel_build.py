"""Build the compiled registrar hot path (see appliance/accel.py); run by scripts/build-accel.

    .venv/bin/python scripts/accel_build.py [--force]

Compiles ``accel.MODULES`` with mypyc into a fresh directory, then puts it in place of
``.build/accel`` with its stamp written last, so a build cut short is never taken for a good
one. The compiler's output goes to ``.build/accel.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from appliance import accel  # noqa: E402


def build(log: TextIO) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    work = ROOT / ".build" / "accel-work"
    fresh = ROOT / ".build" / "accel.new"
    for directory in (work, fresh):
        shutil.rmtree(directory, ignore_errors=True)
    work.mkdir(parents=True)
    paths = [str(accel.source_path(module).relative_to(ROOT)) for module in accel.MODULES]
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        extensions = mypycify(paths, opt_level="3", group_name=accel.GROUP,
                              target_dir=str(work / "c"))
        setup(name="appliance-accel", packages=[], py_modules=[], ext_modules=extensions,
              script_args=["-q", "build_ext", "--build-lib", str(fresh),
                           "--build-temp", str(work / "obj")])
    (fresh / "stamp").write_text(accel.stamp() + "\n")
    shutil.rmtree(accel.BUILD, ignore_errors=True)
    fresh.rename(accel.BUILD)
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    args = parser.parse_args()
    if not args.force and accel.built_stamp() == accel.stamp():
        return 0
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(f"build-accel: no C compiler ({compiler}): the registrar runs interpreted",
              file=sys.stderr)
        return 1
    started = time.monotonic()
    log_path = ROOT / ".build" / "accel.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        try:
            build(log)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure: interpreted
            print(f"build-accel: the build failed ({err}; see {log_path}): the registrar "
                  "runs interpreted", file=sys.stderr)
            return 1
    print(f"build-accel: {len(accel.MODULES)} modules compiled in "
          f"{time.monotonic() - started:.0f} s into {accel.BUILD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
