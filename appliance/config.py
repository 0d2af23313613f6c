"""Configuration: TOML mapped into frozen dataclasses.

An unknown key or a bad value raises ConfigError naming the key (``sip.listen``), so a typo
stops start-up instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.addresses import unmapped_network
from appliance.errors import ConfigError

_E164 = re.compile(r"^\+[1-9][0-9]{4,14}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    listen: Endpoint = Endpoint("0.0.0.0", 8080)
    # Restcomm answers 413 above this Content-Length (its request filter uses 10,000,000).
    max_body_bytes: int = 10_000_000
    # HTTPS with a self-signed certificate made on first start (or the files named here).
    tls: bool = False
    tls_cert: str = ""  # "" = <data_dir>/tls/cert.pem
    tls_key: str = ""  # "" = <data_dir>/tls/key.pem


@dataclasses.dataclass(frozen=True)
class SipConfig:
    listen: Endpoint = Endpoint("0.0.0.0", 5060)
    domain: str = ""
    # Registrar (sip.md §2.3, api-behaviour.md §11): expiry bounds and contacts per Client.
    min_expires: int = 60
    max_expires: int = 3600
    max_contacts: int = 10
    # Keep-alive (api-behaviour.md §11, sip/ping_schedule.py): OPTIONS to each registered contact
    # every this many seconds; 3 unanswered in a row remove it. 0: no pings.
    ping_interval: int = 60
    # Guard (sip.md §3): failed digests before a ban, the ban, unauthenticated requests/min.
    max_auth_failures: int = 5
    ban_seconds: int = 600
    unauthenticated_per_minute: int = 60
    # Digest challenges of a 401, in order (sip/registrar.py DEFAULT_ALGORITHMS: MD5 first).
    # MD5 only by default: SIPp 3.6 and baresip 1.0 (and MD5-only desk-phone firmware) fail
    # when any SHA-256 challenge is offered. ["SHA-256", "MD5"] enables RFC 8760 SHA-256.
    digest_algorithms: tuple[str, ...] = ("MD5",)
    # Trunk (docs/gateways.md "Behind the office's NAT"): seconds without a REGISTER to a
    # gateway's provider address before a keep-alive (CRLFCRLF) goes there, so the office
    # router keeps the UDP mapping the provider's calls come back through; 0 = none.
    nat_keepalive_interval: int = 20
    # Trunk (docs/gateways.md "the public Contact"): register the public address and port the
    # provider's 200 reports in our Via (received/rport) as the Contact, when it is not ours.
    trunk_learn_public_address: bool = True


# [sip] nat_keepalive_interval: 0 (off) or within these. Below 5 s is traffic for nothing (no
# router forgets a mapping that fast); above 300 s even a router that follows RFC 4787 REQ-5
# (mappings kept 2 minutes at least, 5 recommended) may have forgotten it.
KEEPALIVE_BOUNDS = (5, 300)


@dataclasses.dataclass(frozen=True)
class AdminConfig:
    email: str = "administrator@company.com"
    password: str = ""


@dataclasses.dataclass(frozen=True)
class ModemConfig:
    device: str = ""
    audio_device: str = ""
    number: str = ""
    pin: str = ""


@dataclasses.dataclass(frozen=True)
class MediaConfig:
    workers: int = 1
    public_address: str = ""
    rtp_ports: tuple[int, int] = (10000, 10999)


@dataclasses.dataclass(frozen=True)
class OutboundRoute:
    """One ``[[outbound.routes]]`` entry: numbers starting with PREFIX leave through LINES,
    tried in order (the next one on a 5xx, 408 or no answer from the line)."""

    prefix: str = ""  # "" matches every number; the longest matching prefix wins
    lines: tuple[str, ...] = ()  # "gateway:<FriendlyName>" or "modem"


@dataclasses.dataclass(frozen=True)
class OutboundConfig:
    """The ``[outbound]`` section: which numbers leave through which line (docs/gateways.md).

    Keys::

        [outbound]
        max_calls = 4                 # outbound calls at once; more are answered 503

        [[outbound.routes]]
        prefix = "+1"                 # longest prefix wins; "" = everything
        lines = ["gateway:provider", "modem"]
    """

    max_calls: int = 4
    routes: tuple[OutboundRoute, ...] = ()

    def lines_for(self, number: str) -> tuple[str, ...]:
        """The lines of the longest route prefix NUMBER starts with (empty: no route)."""
        best: OutboundRoute | None = None
        for route in self.routes:
            if number.startswith(route.prefix) and (
                    best is None or len(route.prefix) > len(best.prefix)):
                best = route
        return best.lines if best is not None else ()


@dataclasses.dataclass(frozen=True)
class InboundConfig:
    """The ``[inbound]`` section: where providers send calls from (docs/gateways.md).

    Keys::

        [inbound.sources]             # per gateway FriendlyName: addresses besides its registrar
        provider = ["203.0.113.7", "198.51.100.0/24", "192.0.2.10:5080"]
    """

    # (FriendlyName, ((network, port or None = any), ...)), in the file's order
    sources: tuple[tuple[str, tuple[tuple[str, int | None], ...]], ...] = ()


@dataclasses.dataclass(frozen=True)
class GpioConfig:
    """The ``[gpio]`` section of config.toml. Pins are BCM GPIO numbers; None = not fitted.

    Keys::

        [gpio]
        enabled = false      # true on a Pi with the LED/button board; false = no GPIO access
        status_led = 17      # booting: slow blink, healthy: on, fault: fast blink
        line_led = 27        # on while a gateway is registered or the modem is on the network
        signal_led = 22      # off: none, blink: weak, on: good signal
        button = 23          # to GND, internal pull-up; short press: IP octet, hold 10 s: reset

    The defaults match ``firmware-config/config.txt.fragment``, which sets the LED pins low
    and the button pull-up at boot. Avoid GPIO 14/15 (the UART a modem HAT uses) and 2/3 (I²C).
    """

    enabled: bool = False
    status_led: int | None = 17
    line_led: int | None = 27
    signal_led: int | None = 22
    button: int | None = 23

    def pins(self) -> tuple[int, ...]:
        return tuple(
            pin
            for pin in (self.status_led, self.line_led, self.signal_led, self.button)
            if pin is not None
        )


@dataclasses.dataclass(frozen=True)
class Config:
    data_dir: Path = Path("var")
    api: ApiConfig = ApiConfig()
    sip: SipConfig = SipConfig()
    admin: AdminConfig = AdminConfig()
    modem: ModemConfig = ModemConfig()
    media: MediaConfig = MediaConfig()
    gpio: GpioConfig = GpioConfig()
    outbound: OutboundConfig = OutboundConfig()
    inbound: InboundConfig = InboundConfig()


def _endpoint(key: str, value: Any) -> Endpoint:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string like \"0.0.0.0:8080\", got {value!r}")
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range 1-65535")
    try:
        address = ipaddress.ip_address(host)
        # One spelling: "[::0]" is the wildcard "::", and "[::ffff:127.0.0.1]" (no socket
        # can bind it) the IPv4 address it maps.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        host = str(address)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{key}: {host!r} is not an IP address") from None
    return Endpoint(host, port)


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{key}: {value} is out of range {low}-{high}")
    return value


def _port_range(key: str, value: Any) -> tuple[int, int]:
    text = _string(key, value)
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if not match:
        raise ConfigError(f"{key}: expected LOW-HIGH, got {text!r}")
    low, high = int(match[1]), int(match[2])
    if not (1024 <= low < high <= 65535) or (high - low) < 3:
        raise ConfigError(f"{key}: {text!r} must be an even-sized range within 1024-65535")
    return low, high


def _algorithms(key: str, value: Any) -> tuple[str, ...]:
    known = {"md5": "MD5", "sha-256": "SHA-256"}
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list like [\"MD5\", \"SHA-256\"], got {value!r}")
    names = [known.get(v.lower()) for v in value]
    if None in names or len(set(names)) != len(names):
        raise ConfigError(f"{key}: each of MD5 and SHA-256 at most once, got {value!r}")
    return tuple(n for n in names if n is not None)


def _keepalive_interval(key: str, value: Any) -> int:
    low, high = KEEPALIVE_BOUNDS
    seconds = _int(key, value, 0, high)
    if 0 < seconds < low:
        raise ConfigError(f"{key}: {seconds} is out of range {low}-{high} (0 turns it off)")
    return seconds


def _section(name: str, raw: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a table, got {raw!r}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key")
    return raw


def parse(raw: Mapping[str, Any]) -> Config:
    """Build a Config from a parsed TOML mapping; every missing key takes its default."""
    top_keys = {"data_dir", "api", "sip", "admin", "modem", "media", "gpio", "outbound",
                "inbound"}
    unknown = sorted(set(raw) - top_keys)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")
    default = Config()

    api_raw = _section("api", raw.get("api", {}),
                       {"listen", "max_body_bytes", "tls", "tls_cert", "tls_key"})
    tls = api_raw.get("tls", False)
    if not isinstance(tls, bool):
        raise ConfigError(f"api.tls: expected true or false, got {tls!r}")
    api = ApiConfig(
        listen=_endpoint("api.listen", api_raw["listen"]) if "listen" in api_raw
        else default.api.listen,
        max_body_bytes=_int("api.max_body_bytes", api_raw.get("max_body_bytes", 10_000_000),
                            1024, 100_000_000),
        tls=tls,
        tls_cert=_string("api.tls_cert", api_raw.get("tls_cert", "")),
        tls_key=_string("api.tls_key", api_raw.get("tls_key", "")),
    )

    sip_raw = _section("sip", raw.get("sip", {}),
                       {"listen", "domain", "min_expires", "max_expires", "max_contacts",
                        "max_auth_failures", "ban_seconds", "unauthenticated_per_minute",
                        "digest_algorithms", "nat_keepalive_interval",
                        "trunk_learn_public_address", "ping_interval"})
    learn = sip_raw.get("trunk_learn_public_address", default.sip.trunk_learn_public_address)
    if not isinstance(learn, bool):
        raise ConfigError(f"sip.trunk_learn_public_address: expected true or false, got {learn!r}")
    domain = _string("sip.domain", sip_raw.get("domain", ""))
    if domain and not re.fullmatch(r"[A-Za-z0-9.\-]+", domain):
        raise ConfigError(f"sip.domain: {domain!r} is not a host name or address")
    sip = SipConfig(
        listen=_endpoint("sip.listen", sip_raw["listen"]) if "listen" in sip_raw
        else default.sip.listen,
        domain=domain,
        min_expires=_int("sip.min_expires", sip_raw.get("min_expires", 60), 1, 3600),
        max_expires=_int("sip.max_expires", sip_raw.get("max_expires", 3600), 60, 86400),
        max_contacts=_int("sip.max_contacts", sip_raw.get("max_contacts", 10), 1, 100),
        ping_interval=_int("sip.ping_interval", sip_raw.get("ping_interval", 60), 0, 3600),
        max_auth_failures=_int("sip.max_auth_failures", sip_raw.get("max_auth_failures", 5),
                               1, 1000),
        ban_seconds=_int("sip.ban_seconds", sip_raw.get("ban_seconds", 600), 0, 86400 * 7),
        unauthenticated_per_minute=_int("sip.unauthenticated_per_minute",
                                        sip_raw.get("unauthenticated_per_minute", 60),
                                        1, 100_000),
        digest_algorithms=_algorithms("sip.digest_algorithms",
                                      sip_raw.get("digest_algorithms", ["MD5"])),
        nat_keepalive_interval=_keepalive_interval(
            "sip.nat_keepalive_interval",
            sip_raw.get("nat_keepalive_interval", default.sip.nat_keepalive_interval)),
        trunk_learn_public_address=learn,
    )
    if sip.min_expires > sip.max_expires:
        raise ConfigError("sip.min_expires: must not exceed sip.max_expires")

    admin_raw = _section("admin", raw.get("admin", {}), {"email", "password"})
    email = _string("admin.email", admin_raw.get("email", default.admin.email)).lower()
    if not _EMAIL.fullmatch(email):
        raise ConfigError(f"admin.email: {email!r} is not an email address")
    admin = AdminConfig(email=email, password=_string("admin.password",
                                                      admin_raw.get("password", "")))

    modem_raw = _section("modem", raw.get("modem", {}), {"device", "audio_device", "number", "pin"})
    number = _string("modem.number", modem_raw.get("number", ""))
    if number and not _E164.fullmatch(number):
        raise ConfigError(f"modem.number: {number!r} is not an E.164 number like +15551234567")
    pin = _string("modem.pin", modem_raw.get("pin", ""))
    if pin and not re.fullmatch(r"[0-9]{4,8}", pin):
        raise ConfigError("modem.pin: a SIM PIN is 4 to 8 digits")
    modem = ModemConfig(
        device=_string("modem.device", modem_raw.get("device", "")),
        audio_device=_string("modem.audio_device", modem_raw.get("audio_device", "")),
        number=number,
        pin=pin,
    )

    media_raw = _section("media", raw.get("media", {}),
                         {"workers", "public_address", "rtp_ports"})
    public_address = _string("media.public_address", media_raw.get("public_address", ""))
    if public_address:
        try:
            ipaddress.ip_address(public_address)
        except ValueError:
            raise ConfigError(
                f"media.public_address: {public_address!r} is not an IP address") from None
    media = MediaConfig(
        workers=_int("media.workers", media_raw.get("workers", 1), 0, 64),
        public_address=public_address,
        rtp_ports=_port_range("media.rtp_ports", media_raw["rtp_ports"])
        if "rtp_ports" in media_raw else default.media.rtp_ports,
    )

    gpio_raw = _section("gpio", raw.get("gpio", {}),
                        {"enabled", "status_led", "line_led", "signal_led", "button"})
    enabled = gpio_raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"gpio.enabled: expected true or false, got {enabled!r}")
    pins: dict[str, int | None] = {}
    for key in ("status_led", "line_led", "signal_led", "button"):
        value = gpio_raw.get(key, getattr(default.gpio, key))
        # A pin of -1 (or false) means "not fitted"; BCM numbers are 0-27 on a Pi header.
        # (`in (-1, False)` would take 0 for False: GPIO 0 is a pin like any other.)
        not_fitted = value is False or (type(value) is int and value == -1)
        pins[key] = None if not_fitted else _int(f"gpio.{key}", value, 0, 27)
    gpio = GpioConfig(enabled=enabled, **pins)

    outbound = _outbound(raw.get("outbound", {}))
    inbound = _inbound(raw.get("inbound", {}))

    data_dir = _string("data_dir", raw.get("data_dir", str(default.data_dir)))
    if not data_dir:
        raise ConfigError("data_dir: must not be empty")
    return Config(data_dir=Path(data_dir), api=api, sip=sip, admin=admin, modem=modem,
                  media=media, gpio=gpio, outbound=outbound, inbound=inbound)


_PREFIX = re.compile(r"\+?[0-9*#]{0,32}")
_LINE = re.compile(r"modem|gateway:[^\x00-\x1f]{1,255}")
MAX_ROUTES = 100


def _outbound(raw: Any) -> OutboundConfig:
    section = _section("outbound", raw, {"max_calls", "routes"})
    routes_raw = section.get("routes", [])
    if not isinstance(routes_raw, list) or len(routes_raw) > MAX_ROUTES:
        raise ConfigError(f"outbound.routes: expected a list of at most {MAX_ROUTES} tables "
                          "([[outbound.routes]])")
    routes: list[OutboundRoute] = []
    for i, entry in enumerate(routes_raw):
        key = f"outbound.routes[{i}]"
        entry = _section(key, entry, {"prefix", "lines"})
        prefix = _string(f"{key}.prefix", entry.get("prefix", ""))
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(f"{key}.prefix: {prefix!r} is not a number prefix like \"+1\"")
        if any(r.prefix == prefix for r in routes):
            raise ConfigError(f"{key}.prefix: {prefix!r} is already routed")
        lines = entry.get("lines")
        if (not isinstance(lines, list) or not lines or len(lines) > 16
                or not all(isinstance(line, str) for line in lines)):
            raise ConfigError(f"{key}.lines: expected a list like [\"gateway:provider\", "
                              f"\"modem\"], got {lines!r}")
        for line in lines:
            if not _LINE.fullmatch(line):
                raise ConfigError(f"{key}.lines: {line!r} is neither \"modem\" nor "
                                  "\"gateway:<FriendlyName>\"")
        routes.append(OutboundRoute(prefix=prefix, lines=tuple(lines)))
    return OutboundConfig(max_calls=_int("outbound.max_calls", section.get("max_calls", 4),
                                         0, 1000),
                          routes=tuple(routes))


MAX_SOURCES = 64  # addresses or networks per gateway in [inbound.sources]


def _source(key: str, text: Any) -> tuple[str, int | None]:
    """One provider address: an IP or a network (``/prefix``), optionally with a port
    (``192.0.2.10:5080``, ``[2001:db8::1]:5060``); as (network, port or None)."""
    try:
        if not isinstance(text, str) or len(text) > 64:
            raise ValueError(text)
        port: str | None = None
        if text.startswith("["):
            address, _, rest = text[1:].partition("]")
            if rest:
                port = rest.removeprefix(":") if rest.startswith(":") else "x"
        elif text.count(":") == 1:
            address, _, port = text.partition(":")
        else:
            address = text
        network = ipaddress.ip_network(address, strict=False)
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(port)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not an address like \"203.0.113.7\", "
                          "\"198.51.100.0/24\" or \"192.0.2.10:5080\"") from None
    return str(unmapped_network(network)), int(port) if port is not None else None


def _inbound(raw: Any) -> InboundConfig:
    section = _section("inbound", raw, {"sources"})
    sources_raw = section.get("sources", {})
    if not isinstance(sources_raw, dict):
        raise ConfigError("inbound.sources: expected a table of gateway FriendlyName = "
                          "[addresses]")
    sources: list[tuple[str, tuple[tuple[str, int | None], ...]]] = []
    for name, addresses in sources_raw.items():
        key = f"inbound.sources.{name}"
        if not isinstance(addresses, list) or not 0 < len(addresses) <= MAX_SOURCES:
            raise ConfigError(f"{key}: expected a list of 1-{MAX_SOURCES} addresses")
        sources.append((name, tuple(_source(key, a) for a in addresses)))
    return InboundConfig(sources=tuple(sources))


def load(path: Path | None) -> Config:
    """Read PATH (or use the embedded defaults when PATH is None)."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from err
    return parse(raw)
