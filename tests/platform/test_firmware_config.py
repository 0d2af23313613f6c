"""firmware-config/: the files parse, and say what the design says they say."""

from __future__ import annotations

import configparser
import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from appliance.platform.gpio import GpioConfig

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware-config"
RULES = FIRMWARE / "99-appliance-modems.rules"
CONFIG = FIRMWARE / "config.toml"

# Every top-level key of the config block in architecture.md ("Contract with the outside").
ARCHITECTURE_KEYS = {
    "data_dir": None,
    "api": {"listen"},
    "sip": {"listen", "domain"},
    "admin": {"email", "password"},
    "modem": {"device", "audio_device", "number", "pin"},
    "media": {"workers", "public_address", "rtp_ports"},
}


# --- config.toml -------------------------------------------------------------------------------


def test_config_toml_has_every_architecture_key() -> None:
    raw = tomllib.loads(CONFIG.read_text())
    assert raw["data_dir"] == "/var/lib/appliance"
    for section, keys in ARCHITECTURE_KEYS.items():
        assert section in raw, section
        if keys is not None:
            assert keys <= set(raw[section]), (section, keys - set(raw[section]))


def test_config_toml_is_accepted_by_the_appliance() -> None:
    from appliance import config

    parsed = config.parse(tomllib.loads(CONFIG.read_text()))
    assert str(parsed.data_dir) == "/var/lib/appliance"
    defaults = config.Config()
    # Everything but data_dir is at its default, so the file documents the defaults.
    assert dataclasses.replace(parsed, data_dir=defaults.data_dir) == defaults


def test_config_toml_documents_the_gpio_section() -> None:
    """The [gpio] block parses, and matches GpioConfig's fields and defaults."""
    gpio = tomllib.loads(CONFIG.read_text())["gpio"]
    assert GpioConfig(**gpio) == GpioConfig()
    assert set(gpio) == {f.name for f in dataclasses.fields(GpioConfig)}
    assert all(f"{key} = " in (GpioConfig.__doc__ or "") for key in gpio)


# --- udev rules --------------------------------------------------------------------------------

_MATCH_KEYS = {"ACTION", "DEVPATH", "KERNEL", "NAME", "SYMLINK", "SUBSYSTEM", "DRIVER", "ATTR",
               "SYSCTL", "KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS", "TAGS", "TAG", "TEST",
               "ENV", "CONST", "PROGRAM", "RESULT"}
_ASSIGN_KEYS = {"NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "ATTR", "SYSCTL", "ENV",
                "TAG", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS"}
_TOKEN = re.compile(r'\s*([A-Z]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')


def _rules() -> list[list[tuple[str, str | None, str, str]]]:
    """The rules file as a list of rules, each a list of (key, attribute, operator, value)."""
    logical: list[str] = []
    pending = ""
    for line in RULES.read_text().splitlines():
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.lstrip().startswith("#"):
            logical.append(line)
    rules = []
    for line in logical:
        tokens, pos = [], 0
        while pos < len(line):
            match = _TOKEN.match(line, pos)
            assert match, f"cannot parse at {line[pos:]!r}"
            tokens.append((match[1], match[2], match[3], match[4]))
            pos = match.end()
        rules.append(tokens)
    return rules


def test_udev_rules_are_well_formed() -> None:
    rules = _rules()
    labels = {v for rule in rules for k, _, _, v in rule if k == "LABEL"}
    for rule in rules:
        for key, attr, op, value in rule:
            if op in ("==", "!="):
                assert key in _MATCH_KEYS, (key, rule)
            else:
                assert key in _ASSIGN_KEYS, (key, rule)
            if key in ("ATTR", "ATTRS", "ENV"):
                assert attr, (key, rule)
            if key == "GOTO":
                assert value in labels, f"GOTO to an undefined LABEL {value}"
            if key == "MODE":
                assert value == "0660"
            if key == "GROUP":
                assert value in ("dialout", "gpio")


def test_udev_rules_cover_the_modems() -> None:
    text = RULES.read_text()
    rules = _rules()

    def products(vendor_label: str, link: str) -> set[str]:
        in_section, found = False, set()
        for rule in rules:
            keys = {(k, a): v for k, a, _, v in rule}
            if ("LABEL", None) in keys:
                in_section = keys[("LABEL", None)] == vendor_label
            if in_section and keys.get(("SYMLINK", None)) == link:
                found |= set(keys[("ATTRS", "idProduct")].split("|"))
        return found

    assert products("appliance_quectel", "modem-at") == {"0125", "0121", "0296", "030a", "0800"}
    assert products("appliance_quectel", "modem-audio") == {"0125", "0121"}
    assert products("appliance_simcom", "modem-at") == {"9001", "9011"}
    assert products("appliance_simcom", "modem-audio") == {"9001"}
    assert products("appliance_huawei", "modem-at") == {"1506", "1436"}
    # EC25: AT on if02, audio on if01 (modem.md §2)
    assert re.search(r'"0125\|0121", ENV\{\.APPLIANCE_IFNUM\}=="02", SYMLINK\+="modem-at"', text)
    assert re.search(r'"0125\|0121", ENV\{\.APPLIANCE_IFNUM\}=="01", SYMLINK\+="modem-audio"',
                     text)
    assert 'ATTRS{idVendor}=="2c7c|1e0e|12d1", ENV{ID_MM_DEVICE_IGNORE}="1"' in text


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm is not installed")
def test_udevadm_verify(tmp_path: Path) -> None:
    help_text = subprocess.run(["udevadm", "--help"], capture_output=True, text=True).stdout
    if "verify" not in help_text:
        pytest.skip("this udevadm has no verify command (systemd < 254)")
    result = subprocess.run(["udevadm", "verify", str(RULES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the other fragments -----------------------------------------------------------------------


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_journald_conf_is_kind_to_sd_cards() -> None:
    journal = _ini(FIRMWARE / "journald.conf.d" / "appliance.conf")["Journal"]
    assert journal["Storage"] == "volatile"
    assert journal["RuntimeMaxUse"] == "32M"
    assert journal["ForwardToSyslog"] == "no"


def test_hardware_watchdog_within_the_bcm2835_limit() -> None:
    manager = _ini(FIRMWARE / "system.conf.d" / "watchdog.conf")["Manager"]
    assert manager["RuntimeWatchdogSec"].endswith("s")
    assert int(manager["RuntimeWatchdogSec"][:-1]) < 16


def test_config_txt_fragment() -> None:
    lines = [line.strip() for line in (FIRMWARE / "config.txt.fragment").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "enable_uart=1" in lines
    assert "dtoverlay=disable-bt" in lines
    gpio = GpioConfig()
    assert f"gpio={gpio.button}=ip,pu" in lines
    assert f"gpio={gpio.status_led},{gpio.line_led},{gpio.signal_led}=op,dl" in lines


def test_cmdline_fragment_removes_the_serial_console() -> None:
    edits = [line.strip() for line in (FIRMWARE / "cmdline.txt.fragment").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert all(edit[0] in "+-" and " " not in edit for edit in edits), edits
    assert "-console=serial0,115200" in edits


def test_readme_describes_every_file() -> None:
    readme = (FIRMWARE / "README.md").read_text()
    for path in sorted(FIRMWARE.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(FIRMWARE)) in readme, path
    for path in sorted((ROOT / "systemd").iterdir()):
        assert path.name in readme, path
