"""The modem's PCM tty (modem.md §2.9): raw, non-blocking, whole 320-byte frames, 20 ms pacing.

No pjsua2 here: `PcmLink` moves bytes between the tty and two bounded deques that
`worker.pcm_port.PcmPort` (the pjsua2 side) fills and drains on the conference clock thread.
A deque's append/popleft is atomic, so the two threads share nothing else.

* Downlink (modem → call): frames are read as they arrive and appended to `downlink`; when it
  is full the oldest frame goes (bounded latency after a stall). An optional `on_frame`
  callback sees each frame too (in-band DTMF detection), on this thread.
* Uplink (call → modem): exactly one frame per 20 ms tick, driven by the clock rather than by
  data arrival; silence when the call side has nothing (§2.9 "uplink pacing").
* Both consumers take frames through `next_frame`: a queue that a burst after a stall left
  above HIGH_WATER frames is drained one extra frame per tick down to it, so the delay a
  stall adds does not stay for the rest of the call (the deques' bound alone would keep it at
  up to 200 ms).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable

logger = logging.getLogger(__name__)

FRAME_BYTES = 320  # 20 ms of 8 kHz S16LE mono
FRAME_SECONDS = 0.02
SILENCE = bytes(FRAME_BYTES)
MAX_READ = 16 * FRAME_BYTES
HIGH_WATER = 3  # frames queued beyond this are surplus delay: one is skipped per tick


def next_frame(queue: collections.deque[bytes]) -> bytes | None:
    """The frame to play now from QUEUE (None on underrun), skipping one queued frame when
    more than HIGH_WATER wait, so a backlog drains at twice the pace down to HIGH_WATER."""
    try:
        if len(queue) > HIGH_WATER:
            queue.popleft()
        return queue.popleft()
    except IndexError:  # the other thread drained it meanwhile
        return None


class PcmTty:
    """An open PCM device: `read_frames()` and `write_frame()` never block."""

    def __init__(self, path: str, frame_bytes: int = FRAME_BYTES) -> None:
        self.path = path
        self.frame_bytes = frame_bytes
        self._buf = bytearray()
        self.dropped_writes = 0
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if os.isatty(self.fd):
                tty.setraw(self.fd)  # no echo, no line discipline: PCM is binary
                termios.tcflush(self.fd, termios.TCIFLUSH)  # stale audio from before
        except (OSError, termios.error):
            os.close(self.fd)
            raise

    def read_frames(self) -> list[bytes]:
        """Every whole frame available now (a partial one waits for its rest)."""
        while True:
            try:
                data = os.read(self.fd, MAX_READ)
            except BlockingIOError:
                break
            if not data:
                break
            self._buf += data
            if len(data) < MAX_READ:
                break
        n = len(self._buf) // self.frame_bytes * self.frame_bytes
        if n == 0:
            return []
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        return [chunk[i:i + self.frame_bytes] for i in range(0, n, self.frame_bytes)]

    def write_frame(self, frame: bytes) -> None:
        """One frame, or nothing when the device cannot take it now (counted)."""
        try:
            written = os.write(self.fd, frame)
        except BlockingIOError:
            written = 0
        if written < len(frame):
            self.dropped_writes += 1

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class PcmLink:
    """A thread pumping one `PcmTty` ⇄ (downlink, uplink) deques; `stop()` ends it."""

    def __init__(
        self, device: PcmTty, downlink: collections.deque[bytes],
        uplink: collections.deque[bytes], *, on_frame: Callable[[bytes], None] | None = None,
        on_lost: Callable[[str], None] | None = None, name: str = "pcm",
    ) -> None:
        self.device = device
        self.downlink = downlink
        self.uplink = uplink
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.frames_in = 0
        self.frames_out = 0
        self.underruns = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PcmLink:
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.device.close()

    def _run(self) -> None:
        tick = time.monotonic() + FRAME_SECONDS
        try:
            while not self._stop.is_set():
                wait = tick - time.monotonic()
                if wait > 0:
                    ready, _, _ = select.select([self.device.fd], [], [], wait)
                    if ready:
                        self._read()
                    continue
                self._read()
                frame = next_frame(self.uplink)
                if frame is None or len(frame) != self.device.frame_bytes:
                    self.underruns += frame is None
                    frame = SILENCE if frame is None else frame[:FRAME_BYTES].ljust(
                        FRAME_BYTES, b"\0")
                self.device.write_frame(frame)
                self.frames_out += 1
                tick += FRAME_SECONDS
                if time.monotonic() - tick > 5 * FRAME_SECONDS:
                    tick = time.monotonic() + FRAME_SECONDS  # stalled: no catch-up burst
        except (OSError, ValueError) as err:  # EIO: the modem re-enumerated or vanished
            if not self._stop.is_set():
                logger.warning("x PCM device %s lost: %s", self.device.path, err)
                if self.on_lost is not None:
                    self.on_lost(str(err))

    def _read(self) -> None:
        for frame in self.device.read_frames():
            self.frames_in += 1
            self.downlink.append(frame)  # bounded deque: the oldest frame goes when full
            if self.on_frame is not None:
                self.on_frame(frame)
