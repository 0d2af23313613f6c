"""A Config written back as TOML, as ``appliance check-config`` prints it: the effective
values (defaults filled in, addresses in the one spelling they are read in), in the file's
own syntax so that any of it can be copied into config.toml. Secrets (the admin password,
the SIM PIN) are never printed: a set one shows as a comment, ``# pin = (set)``, so that a
copy of the output neither carries nor replaces it with a placeholder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from appliance.config import Config, Endpoint, InboundConfig, OutboundConfig

SECRETS = frozenset({("admin", "password"), ("modem", "pin")})


def config_toml(config: Config) -> str:
    """CONFIG as TOML text (see the module docstring)."""
    lines = [f"data_dir = {_value(config.data_dir)}"]
    for field in dataclasses.fields(config):
        section = getattr(config, field.name)
        if not dataclasses.is_dataclass(section):
            continue
        if isinstance(section, OutboundConfig):
            lines += ["", "[outbound]", f"max_calls = {section.max_calls}"]
            for route in section.routes:
                lines += ["", "[[outbound.routes]]", f"prefix = {_value(route.prefix)}",
                          f"lines = {_value(route.lines)}"]
            continue
        if isinstance(section, InboundConfig):
            lines += ["", "[inbound.sources]"]
            for name, addresses in section.sources:
                listed = [_source(network, port) for network, port in addresses]
                lines.append(f"{_key(name)} = {_value(listed)}")
            continue
        lines += ["", f"[{field.name}]"]
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if (field.name, item.name) in SECRETS:
                lines.append(f"# {item.name} = {'(set)' if value else '(not set)'}")
            elif (field.name, item.name) == ("media", "rtp_ports"):
                lines.append(f"{item.name} = {_value(f'{value[0]}-{value[1]}')}")
            elif field.name == "gpio" and value is None:
                lines.append(f"{item.name} = -1")  # not fitted, as the file says it
            else:
                lines.append(f"{item.name} = {_value(value)}")
    return "\n".join(lines) + "\n"


def _source(network: str, port: int | None) -> str:
    """An ``[inbound.sources]`` entry as the file writes it: one address bare (no /32)."""
    host = network.removesuffix("/32") if "." in network else network.removesuffix("/128")
    return host if port is None else _host_port(host, port)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "")
    return name if bare.isascii() and bare.isalnum() else _string(name)


def _string(text: str) -> str:
    """TEXT as a TOML basic string: control characters and DEL escaped (TOML allows none of
    them raw), everything else as it is (JSON's \\u escapes would split an emoji into a
    surrogate pair, which TOML refuses)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c
                         for c in escaped) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Endpoint):
        return _string(_host_port(value.host, value.port))
    if isinstance(value, Path):
        return _string(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return _string(str(value))
