"""The TOML contract of architecture.md: defaults, every key, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.config import Config, Endpoint, load, parse
from appliance.errors import ConfigError

FULL = """
data_dir = "/var/lib/appliance"
[api]
listen = "127.0.0.1:8081"
[sip]
listen = "0.0.0.0:5070"
domain = "pbx.example.com"
ping_interval = 30
[admin]
email = "Boss@Example.com"
password = "Pbx-edge-7"
[modem]
device = "/dev/modem-at"
audio_device = "/dev/modem-audio"
number = "+15551234567"
pin = "1234"
[media]
workers = 2
public_address = "192.0.2.10"
rtp_ports = "12000-12999"
"""


def test_defaults_without_a_file() -> None:
    cfg = load(None)
    assert cfg == Config()
    assert cfg.data_dir == Path("var")
    assert cfg.api.listen == Endpoint("0.0.0.0", 8080)
    assert cfg.sip.listen == Endpoint("0.0.0.0", 5060)
    assert cfg.admin.email == "administrator@company.com"
    assert cfg.media.rtp_ports == (10000, 10999)
    assert cfg.sip.ping_interval == 60
    assert parse({"sip": {"ping_interval": 0}}).sip.ping_interval == 0  # no pings


def test_every_documented_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FULL)
    cfg = load(path)
    assert cfg.data_dir == Path("/var/lib/appliance")
    assert cfg.api.listen == Endpoint("127.0.0.1", 8081)
    assert cfg.sip.domain == "pbx.example.com"
    assert cfg.sip.ping_interval == 30
    assert cfg.admin.email == "boss@example.com"
    assert cfg.modem.number == "+15551234567"
    assert cfg.media.workers == 2
    assert cfg.media.rtp_ports == (12000, 12999)


def test_listen_addresses_have_one_spelling() -> None:
    # "[::0]" is the IPv6 wildcard too: it must be served dual-stack and advertised as "::" is.
    assert parse({"sip": {"listen": "[::0]:5070"}}).sip.listen == Endpoint("::", 5070)
    assert parse({"api": {"listen": "[0:0::0]:8081"}}).api.listen == Endpoint("::", 8081)
    assert parse({"api": {"listen": "[2001:DB8::1]:8081"}}).api.listen == Endpoint(
        "2001:db8::1", 8081)
    # No socket binds a v4-mapped address: it is the IPv4 one.
    assert parse({"sip": {"listen": "[::ffff:127.0.0.1]:5070"}}).sip.listen == Endpoint(
        "127.0.0.1", 5070)


def test_gpio_pin_0_is_a_pin_not_absent() -> None:
    gpio = parse({"gpio": {"button": 0, "status_led": 0, "line_led": -1,
                           "signal_led": False}}).gpio
    assert (gpio.button, gpio.status_led, gpio.line_led, gpio.signal_led) == (0, 0, None, None)


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.data_dir = Path("x")  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "key"), [
    ({"sip": {"domian": "x"}}, "sip.domian"),
    ({"colour": 1}, "colour"),
    ({"api": {"listen": "8080"}}, "api.listen"),
    ({"api": {"listen": "0.0.0.0:99999"}}, "api.listen"),
    ({"api": {"listen": "example.com:80"}}, "api.listen"),
    ({"media": {"workers": "two"}}, "media.workers"),
    ({"media": {"workers": -1}}, "media.workers"),
    ({"media": {"rtp_ports": "9000"}}, "media.rtp_ports"),
    ({"modem": {"number": "5551234"}}, "modem.number"),
    ({"modem": {"pin": "12a4"}}, "modem.pin"),
    ({"admin": {"email": "nobody"}}, "admin.email"),
    ({"media": "fast"}, "media"),
    ({"data_dir": ""}, "data_dir"),
    ({"sip": {"nat_keepalive_interval": 2}}, "sip.nat_keepalive_interval"),
    ({"sip": {"nat_keepalive_interval": 301}}, "sip.nat_keepalive_interval"),
    ({"sip": {"nat_keepalive_interval": -1}}, "sip.nat_keepalive_interval"),
    ({"sip": {"nat_keepalive_interval": 0.5}}, "sip.nat_keepalive_interval"),
    ({"sip": {"nat_keepalive_interval": "20s"}}, "sip.nat_keepalive_interval"),
    ({"sip": {"trunk_learn_public_address": "yes"}}, "sip.trunk_learn_public_address"),
    ({"sip": {"trunk_learn_public_address": 1}}, "sip.trunk_learn_public_address"),
    ({"sip": {"ping_interval": -1}}, "sip.ping_interval"),
    ({"sip": {"ping_interval": 3601}}, "sip.ping_interval"),
    ({"sip": {"ping_interval": 1.5}}, "sip.ping_interval"),
    ({"sip": {"ping_interval": "60"}}, "sip.ping_interval"),
])
def test_bad_values_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert err.value.message.startswith(key)


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (5, 5), (20, 20), (300, 300)])
def test_nat_keepalive_interval(value: int, expected: int) -> None:
    """Seconds between NAT keep-alives to a gateway's provider: 20 unless set, 0 = off."""
    assert Config().sip.nat_keepalive_interval == 20
    assert parse({}).sip.nat_keepalive_interval == 20
    assert parse({"sip": {"nat_keepalive_interval": value}}).sip.nat_keepalive_interval \
        == expected


def test_trunk_learn_public_address_is_on_unless_turned_off() -> None:
    assert Config().sip.trunk_learn_public_address is True
    assert parse({}).sip.trunk_learn_public_address is True
    assert parse({"sip": {"trunk_learn_public_address": False}}).sip \
        .trunk_learn_public_address is False


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[api\nlisten = 1")
    with pytest.raises(ConfigError):
        load(path)
    with pytest.raises(ConfigError):
        load(tmp_path / "missing.toml")


OUTBOUND = """
[outbound]
max_calls = 2
[[outbound.routes]]
prefix = "+1"
lines = ["gateway:provider", "modem"]
[[outbound.routes]]
prefix = ""
lines = ["gateway:backup"]
[[outbound.routes]]
prefix = "+1555"
lines = ["gateway:local"]
"""


def test_outbound_routes_longest_prefix_wins(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(OUTBOUND)
    outbound = load(path).outbound
    assert outbound.max_calls == 2
    assert [r.prefix for r in outbound.routes] == ["+1", "", "+1555"]
    assert outbound.lines_for("+15551234567") == ("gateway:local",)
    assert outbound.lines_for("+12125550100") == ("gateway:provider", "modem")
    assert outbound.lines_for("0612345678") == ("gateway:backup",)
    defaults = Config().outbound
    assert (defaults.max_calls, defaults.routes, defaults.lines_for("+1")) == (4, (), ())


@pytest.mark.parametrize(("raw", "key"), [
    ({"outbound": {"max_call": 1}}, "outbound.max_call"),
    ({"outbound": {"max_calls": -1}}, "outbound.max_calls"),
    ({"outbound": {"routes": {"prefix": "+1"}}}, "outbound.routes"),
    ({"outbound": {"routes": [{"prefix": "+1", "lines": ["gateway:a"], "x": 1}]}},
     "outbound.routes[0].x"),
    ({"outbound": {"routes": [{"prefix": "abc", "lines": ["modem"]}]}},
     "outbound.routes[0].prefix"),
    ({"outbound": {"routes": [{"prefix": "+1", "lines": []}]}}, "outbound.routes[0].lines"),
    ({"outbound": {"routes": [{"prefix": "+1", "lines": ["trunk"]}]}},
     "outbound.routes[0].lines"),
    ({"outbound": {"routes": [{"lines": ["modem"]}, {"prefix": "", "lines": ["modem"]}]}},
     "outbound.routes[1].prefix"),
])
def test_bad_outbound_values_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse(raw)


def test_inbound_sources(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[inbound.sources]\nprovider = ["203.0.113.7", "198.51.100.0/24", '
                    '"192.0.2.10:5080", "[2001:db8::1]:5060"]\n"my trunk" = ["2001:db8::/32"]\n')
    assert load(path).inbound.sources == (
        ("provider", (("203.0.113.7/32", None), ("198.51.100.0/24", None),
                      ("192.0.2.10/32", 5080), ("2001:db8::1/128", 5060))),
        ("my trunk", (("2001:db8::/32", None),)))
    assert Config().inbound.sources == ()


def test_an_ipv4_mapped_source_is_read_as_ipv4(tmp_path: Path) -> None:
    """Incoming addresses are matched in their IPv4 form: ``::ffff:1.2.3.4`` is kept as
    1.2.3.4 (check-config shows what is matched), not as an IPv6 address none can be in."""
    path = tmp_path / "config.toml"
    path.write_text('[inbound.sources]\nprovider = ["::ffff:1.2.3.4", "[::ffff:1.2.3.4]:5080", '
                    '"::ffff:198.51.100.0/120", "::1"]\n')
    assert load(path).inbound.sources == (
        ("provider", (("1.2.3.4/32", None), ("1.2.3.4/32", 5080), ("198.51.100.0/24", None),
                      ("::1/128", None))),)


@pytest.mark.parametrize(("raw", "key"), [
    ({"inbound": {"source": {}}}, "inbound.source"),
    ({"inbound": {"sources": ["1.2.3.4"]}}, "inbound.sources"),
    ({"inbound": {"sources": {"p": []}}}, "inbound.sources.p"),
    ({"inbound": {"sources": {"p": ["provider.example"]}}}, "inbound.sources.p"),
    ({"inbound": {"sources": {"p": ["1.2.3.4:0"]}}}, "inbound.sources.p"),
    ({"inbound": {"sources": {"p": ["1.2.3.4/33"]}}}, "inbound.sources.p"),
])
def test_bad_inbound_values_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse(raw)


def test_check_config_prints_the_effective_config_as_toml_without_secrets(
        tmp_path: Path) -> None:
    # It printed the dataclasses' repr: unreadable, and the admin password and SIM PIN in
    # clear. Now TOML that reads back as the same config, the secrets only named in comments
    # (a copy of the output then keeps no placeholder password nor an invalid PIN).
    data = tmp_path / "data \U0001F4DE \x7f"  # an emoji and a DEL: TOML must escape one of them
    path = tmp_path / "config.toml"
    path.write_text(FULL.replace('data_dir = "/var/lib/appliance"',
                                 f'data_dir = "{data}"'.replace("\x7f", "\\u007F"))
                    + """[gpio]
enabled = true
button = -1
[[outbound.routes]]
prefix = "+1"
lines = ["gateway:provider", "modem"]
[inbound.sources]
provider = ["203.0.113.7", "198.51.100.0/24", "192.0.2.10:5080", "[2001:db8::1]:5060"]
"caf\u00e9 \U0001F4DE" = ["192.0.2.99"]
""")
    result = subprocess.run([sys.executable, "-m", "appliance", "check-config", "--config",
                             str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Pbx-edge-7" not in result.stdout and '"1234"' not in result.stdout
    assert "# password = (set)" in result.stdout and "# pin = (set)" in result.stdout
    printed = tomllib.loads(result.stdout)
    assert "password" not in printed["admin"] and "pin" not in printed["modem"]
    assert printed["sip"]["ping_interval"] == 30 and printed["sip"]["min_expires"] == 60
    printed["admin"]["password"], printed["modem"]["pin"] = "Pbx-edge-7", "1234"
    assert parse(printed) == load(path)
