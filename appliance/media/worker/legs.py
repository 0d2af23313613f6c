"""Plain data of the pj thread: settings, the per-leg record, SIP and WAV helpers.

No pjsua2 import here: pj objects sit in ``Leg`` fields typed Any and are created and
destroyed only by ``worker.pj`` on its thread.
"""

from __future__ import annotations

import dataclasses
import uuid
import wave
from collections.abc import Callable
from typing import Any

MAX_X_HEADERS = 16


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    worker: str
    sip_port: int
    rtp_ports: tuple[int, int]
    max_calls: int = 4
    public_address: str = ""
    log_level: int = 1  # pjlib console level: 0 none … 5 trace


@dataclasses.dataclass(eq=False)
class Leg:
    id: str
    call: Any
    outgoing: bool
    refused: bool = False  # answered 503 by us; kept only until DISCONNECTED
    answered: bool = False
    ringing: bool = False
    media: Any = None  # pj.AudioMedia once the call's audio is active
    pending: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    player: Any = None
    play_file: str = ""
    play_tag: int = 0  # the play command's tag, for its play_done
    loops_left: int = 0
    recorder: Any = None
    rec_file: str = ""
    rec_started: float = 0.0
    rec_deadline: float = 0.0
    rec_silence: float = 0.0  # seconds without voice that end the recording (0: not watched)
    rec_heard: float = 0.0  # monotonic time voice was last heard (or the recording began)
    rec_checked: float = 0.0  # monotonic time of the last level check
    bridged: set[str] = dataclasses.field(default_factory=set)
    room: str | None = None
    muted: bool = False  # in a room: the leg's audio is not sent to the other members
    ring_deadline: float = 0.0
    end_code: int = 0
    end_reason: str = ""
    pcm: Any = None  # worker.pcm_port.PcmPort while attached to a modem's PCM tty
    pcm_link: Any = None  # worker.pcm_tty.PcmLink: the tty thread feeding that port


def x_headers(msg: str) -> dict[str, str]:
    """X- headers of a raw SIP request (the front door's X-Leg-Id among them)."""
    out: dict[str, str] = {}
    for line in msg.split("\r\n\r\n", 1)[0].split("\n")[1:]:
        name, sep, value = line.partition(":")
        name = name.strip()
        if sep and name[:2].lower() == "x-" and len(out) < MAX_X_HEADERS:
            canonical = "-".join(w.capitalize() for w in name.split("-"))
            out[canonical] = value.strip()[:1024]
    return out


def new_leg_id() -> str:
    return "LG" + uuid.uuid4().hex



def wav_closed(path: str) -> bool:
    """pjmedia writes the RIFF size (bytes 4-8) only when the recorder port is destroyed."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return True  # nothing will change; report what there is
    return len(head) == 8 and head[4:8] != b"\0\0\0\0"


def wav_seconds(path: str, fallback: float) -> float:
    try:
        with wave.open(path, "rb") as w:
            return w.getnframes() / float(w.getframerate())
    except (OSError, EOFError, wave.Error):
        return fallback
