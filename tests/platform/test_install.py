"""scripts/install into a temporary root: files, modes, idempotence, a usable venv.

The tests run ``scripts/install --root <tmp> --no-start --with-pjsua2=no --skip-apt``. The
temporary root is a bare directory, not a Debian system, so the script runs in its "bare" mode
(docs/install.md): no apt, the ``appliance`` user written into ``<tmp>/etc/passwd`` by this
host's ``systemd-sysusers --root``, and ``<tmp>/opt/appliance/.venv`` built with this host's
``/usr/bin/python3``. The venv is relocatable (``uv venv --relocatable``): its scripts find
their interpreter relative to themselves and ``bin/python`` points at ``/usr/bin/python3``, so
``<tmp>/opt/appliance/.venv/bin/appliance --help`` runs here exactly as
``/opt/appliance/.venv/bin/appliance`` does on a target with the same Python. Building for an
arm64 root (chroot + qemu) is images/build-rootfs.sh's job, not these tests'.

Needs root (chown to the appliance group), systemd-sysusers or useradd, /usr/bin/python3 >= 3.11
and PyPI (uv is installed from PyPI into <tmp>/opt/appliance/.tools, as on a device; the
locked packages come from uv's cache when ``scripts/setup`` has filled it).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install"
BEGIN_MARK = "# >>> appliance: firmware-config/config.txt.fragment (managed by scripts/install) >>>"
END_MARK = "# <<< appliance <<<"
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=abcd-02 rootfstype=ext4 rootwait"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="scripts/install must run as root"),
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no /usr/bin/python3"),
    pytest.mark.skipif(
        shutil.which("systemd-sysusers") is None and shutil.which("useradd") is None,
        reason="neither systemd-sysusers nor useradd is installed",
    ),
]


# What scripts/install reads from the checkout.
CHECKOUT = ("scripts/install", "scripts/accel_build.py", "appliance", "pyproject.toml", "uv.lock",
            "README.md", "systemd", "firmware-config")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the checkout, so that edits made while the tests run (or files that
    scripts/install does not ship) cannot make two installs differ."""
    src = tmp_path_factory.mktemp("src")
    for rel in CHECKOUT:
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, src / rel,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    return src


def run_install(src: Path, root: Path, *extra: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(src / "scripts/install"), "--root", str(root), "--no-start", "--with-pjsua2=no",
         "--skip-apt", *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


def pi_boot_files(root: Path, config_txt: str = "dtparam=audio=on\n") -> None:
    """A Raspberry Pi OS bookworm /boot/firmware with its two files."""
    boot = root / "boot" / "firmware"
    boot.mkdir(parents=True)
    (boot / "config.txt").write_text(config_txt)
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root: type, mode, owner, and content hash or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return out


def group_entry(root: Path, name: str) -> list[str]:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"group {name} missing from {root}/etc/group")


class Installed:
    def __init__(self, source: Path, root: Path, first: subprocess.CompletedProcess[str],
                 second: subprocess.CompletedProcess[str], before: dict[str, tuple[object, ...]],
                 after: dict[str, tuple[object, ...]]) -> None:
        self.source, self.root, self.first, self.second = source, root, first, second
        self.before, self.after = before, after


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Installed:
    root = tmp_path_factory.mktemp("root")
    pi_boot_files(root)
    first = run_install(source, root)
    assert first.returncode == 0, first.stderr
    before = snapshot(root)
    second = run_install(source, root)
    assert second.returncode == 0, second.stderr
    return Installed(source, root, first, second, before, snapshot(root))


def mode_owner(path: Path) -> tuple[str, int, int]:
    st = path.lstat()
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


def test_files_land_where_the_unit_expects_them(installed: Installed) -> None:
    r, src = installed.root, installed.source
    fw = src / "firmware-config"
    gid = int(group_entry(r, "appliance")[2])
    expected = {
        "etc/systemd/system/appliance.service": (src / "systemd/appliance.service", "0o644"),
        "usr/lib/sysusers.d/appliance.conf": (src / "systemd/appliance.sysusers.conf", "0o644"),
        "etc/udev/rules.d/99-appliance-modems.rules":
            (fw / "99-appliance-modems.rules", "0o644"),
        "etc/systemd/journald.conf.d/appliance.conf":
            (fw / "journald.conf.d/appliance.conf", "0o644"),
        "etc/systemd/system.conf.d/watchdog.conf":
            (fw / "system.conf.d/watchdog.conf", "0o644"),
        "opt/appliance/pyproject.toml": (src / "pyproject.toml", "0o644"),
        "opt/appliance/uv.lock": (src / "uv.lock", "0o644"),
        "opt/appliance/appliance/cli.py": (src / "appliance/cli.py", "0o644"),
        "opt/appliance/share/config.toml.default": (fw / "config.toml", "0o644"),
    }
    for rel, (source, mode) in expected.items():
        path = r / rel
        assert path.read_bytes() == source.read_bytes(), rel
        assert mode_owner(path) == (mode, 0, 0), rel

    config = r / "etc/appliance/config.toml"
    assert config.read_bytes() == (fw / "config.toml").read_bytes()
    assert mode_owner(config) == ("0o640", 0, gid)
    assert mode_owner(r / "etc/appliance") == ("0o755", 0, 0)
    assert mode_owner(r / "opt/appliance") == ("0o755", 0, 0)
    # The source copy is only the build input: no bytecode beside it.
    assert not list((r / "opt/appliance/appliance").rglob("__pycache__"))
    wants = r / "etc/systemd/system/multi-user.target.wants/appliance.service"
    assert os.readlink(wants) == "/etc/systemd/system/appliance.service"


def test_appliance_user_and_groups(installed: Installed) -> None:
    passwd = (installed.root / "etc/passwd").read_text().splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("appliance:"))
    assert entry[5:] == ["/var/lib/appliance", "/usr/sbin/nologin"]
    assert int(entry[2]) < 1000  # a system user
    for group in ("dialout", "gpio"):
        assert "appliance" in group_entry(installed.root, group)[3].split(","), group


def test_second_run_changes_nothing(installed: Installed) -> None:
    changed = {k for k in installed.before.keys() | installed.after.keys()
               if installed.before.get(k) != installed.after.get(k)}
    assert not changed, sorted(changed)[:20]
    assert "install: installed " not in installed.second.stderr
    assert "keeping the existing /etc/appliance/config.toml" in installed.second.stderr


def test_venv_runs_from_its_install_path(installed: Installed) -> None:
    venv = installed.root / "opt/appliance/.venv"
    assert "relocatable = true" in (venv / "pyvenv.cfg").read_text()
    # The interpreter link names the system Python by its own path, which a target root with
    # python3 has too; the console script carries no absolute path into <tmp>.
    assert os.readlink(venv / "bin/python") == "/usr/bin/python3"
    assert str(installed.root) not in (venv / "bin/appliance").read_text()
    # A built copy, not an editable link back to the source tree.
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "appliance" / "cli.py").is_file()
    assert not list(site.glob("*.pth")) or all(
        str(installed.root) not in p.read_text() for p in site.glob("*.pth"))
    # No dev dependencies in the device's venv.
    assert not (venv / "bin/pytest").exists()

    result = subprocess.run([str(venv / "bin/appliance"), "--help"], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "check-config" in result.stdout


def test_the_installed_service_runs_the_compiled_registrar(installed: Installed) -> None:
    # scripts/install 4b: built for the target's Python beside the tree, where the unit
    # points the appliance (APPLIANCE_ACCEL_DIR), without dev packages in the service's venv.
    unit = (installed.root / "etc/systemd/system/appliance.service").read_text()
    [where] = [line.split("=", 2)[2] for line in unit.splitlines()
               if line.startswith("Environment=APPLIANCE_ACCEL_DIR=")]
    assert where == "/opt/appliance/.build/accel"
    assert "compiling the registrar's hot path" in installed.first.stderr
    assert "compiling" not in installed.second.stderr  # up to date: not built again
    venv = installed.root / "opt/appliance/.venv"
    code = ("import appliance.sip.registrar; from appliance import accel; "
            "print(accel.describe())")
    run = subprocess.run([str(venv / "bin/python"), "-B", "-c", code], capture_output=True,
                         text=True, timeout=60, check=True,
                         env={**os.environ, "APPLIANCE_ACCEL_DIR": f"{installed.root}{where}"})
    assert run.stdout.startswith("registrar: compiled hot path"), run.stdout + run.stderr
    assert not (venv / "bin/mypy").exists()
    assert not list(installed.root.glob("var/tmp/appliance-accel*"))  # the build venv is gone


def test_pi_boot_config_is_applied_once(installed: Installed) -> None:
    boot = installed.root / "boot/firmware"
    text = (boot / "config.txt").read_text()
    assert text.startswith("dtparam=audio=on\n")
    assert text.count(BEGIN_MARK) == 1 and text.count(END_MARK) == 1
    block = text.split(BEGIN_MARK + "\n", 1)[1].split(END_MARK, 1)[0]
    assert block == (installed.source / "firmware-config/config.txt.fragment").read_text()

    tokens = (boot / "cmdline.txt").read_text().split()
    assert "console=serial0,115200" not in tokens
    assert tokens.count("console=tty1") == 1 and "fsck.repair=yes" in tokens
    assert tokens[:4] == ["console=tty1", "root=PARTUUID=abcd-02", "rootfstype=ext4", "rootwait"]
    assert (boot / "cmdline.txt.appliance-orig").read_text() == CMDLINE + "\n"
    for unit in ("serial-getty@ttyAMA0.service", "serial-getty@serial0.service"):
        assert os.readlink(installed.root / "etc/systemd/system" / unit) == "/dev/null"


def test_existing_config_and_outdated_boot_block(installed: Installed, tmp_path: Path) -> None:
    """An upgrade: the admin's config.toml stays; an old appliance block is replaced in place."""
    config = tmp_path / "etc/appliance/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('data_dir = "/srv/appliance"\n')
    config.chmod(0o600)
    pi_boot_files(tmp_path, "dtparam=audio=on\n\n" + BEGIN_MARK + "\nenable_uart=0\n" + END_MARK
                  + "\n\n[pi4]\narm_boost=1\n")
    # Reuse the first root's uv so this test does not fetch it again.
    uv = installed.root / "opt/appliance/.tools/bin/uv"
    result = run_install(installed.source, tmp_path, "--with-accel=no",
                         env={"APPLIANCE_UV": str(uv)})
    assert result.returncode == 0, result.stderr

    assert config.read_text() == 'data_dir = "/srv/appliance"\n'
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "is not group-readable by appliance" in result.stderr

    text = (tmp_path / "boot/firmware/config.txt").read_text()
    assert text.count(BEGIN_MARK) == 1 and "enable_uart=0" not in text
    assert text.startswith("dtparam=audio=on\n\n[pi4]\narm_boost=1\n\n" + BEGIN_MARK)
    fragment = (installed.source / "firmware-config/config.txt.fragment").read_text()
    assert text.endswith(fragment + END_MARK + "\n")


def test_refuses_a_bare_root_without_skip_apt(tmp_path: Path) -> None:
    result = subprocess.run([str(INSTALL), "--root", str(tmp_path), "--no-start"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "not a Debian root file system" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_rejects_unknown_options(tmp_path: Path) -> None:
    for args in (["--frobnicate"], ["--with-pjsua2=maybe"], ["--with-accel=maybe"]):
        result = subprocess.run([str(INSTALL), "--root", str(tmp_path), *args],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode != 0, args
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="pjsua2-python is x86-64 only")
@pytest.mark.skipif(
    subprocess.run(["/usr/bin/python3", "-c", "import sys; assert sys.version_info[:2] == (3, 11)"],
                   check=False, capture_output=True).returncode != 0,
    reason="pjsua2-python has a cp311 wheel only",
)
def test_pjsua2_wheel_on_x86_64(installed: Installed, tmp_path: Path) -> None:
    """--with-pjsua2=wheel: PyPI's pjsua2-python lands in the venv and starts an endpoint."""
    uv = installed.root / "opt/appliance/.tools/bin/uv"
    result = run_install(installed.source, tmp_path, "--with-pjsua2=wheel", "--with-accel=no",
                         env={"APPLIANCE_UV": str(uv)})
    assert result.returncode == 0, result.stderr
    python = tmp_path / "opt/appliance/.venv/bin/python"
    check = subprocess.run(
        [str(python), "-c",
         "import pjsua2 as pj; ep = pj.Endpoint(); ep.libCreate(); c = pj.EpConfig();"
         "c.logConfig.level = 0; c.logConfig.consoleLevel = 0; ep.libInit(c);"
         "ep.audDevManager().setNullDev(); ep.libStart(); ep.libDestroy(); print('ok')"],
        capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0 and check.stdout.strip().endswith("ok"), check.stderr
