"""Text to speech for ``<Say>``: flite or espeak-ng (+ sox) in a subprocess, cached WAVs.

ecosystem.md §6: flite ``-voice kal`` speaks English natively at 8 kHz mono s16, the
conference-bridge rate, in ~10 ms per sentence; other languages go through espeak-ng and
are resampled to 8 kHz by sox. ``<Say voice>`` picks the voice (`say`): ``man`` is each
engine's default, ``woman`` (and Twilio's ``alice``) flite's female ``slt`` (16 kHz, through
sox) for English and espeak-ng's female variant ``+f3`` for the other languages. Neither
engine fails on a voice it lacks (both speak their default without a word), so the voices
are listed once (``flite -lv``, ``espeak-ng --voices=variant``) and a missing one is
`VoiceMissing`, for the runner to fall back on the default voice and say so.

Synthesis runs in subprocesses (never on the loop) under a timeout; results are cached
under ``cache_dir`` by sha256(engine, voice, language, text) (a file per voice), written to a
temporary name and renamed, so a crash never leaves half a WAV in the cache. The cache is
capped (``max_bytes``, least recently used first out: `wavcache`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import tempfile
from pathlib import Path

from appliance.media import wavcache
from appliance.media.engine import VoiceMissing
from appliance.media.protocol import MediaError

logger = logging.getLogger(__name__)

MAX_TEXT = 4000  # characters; Restcomm's <Say> limit is the same order (4096)
TIMEOUT_S = 20.0
RATE = 8000

FLITE_VOICES = frozenset({"kal", "kal16", "slt", "awb", "rms"})
_NATIVE_8K = frozenset({"kal"})  # the rest are 16 kHz and go through sox
_LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_ESPEAK_VOICE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*(\+[a-z0-9]{1,12})?$")
# <Say voice> values spoken by a female voice: RCML's "woman" and Twilio's "alice".
FEMALE = frozenset({"woman", "alice"})
FLITE_FEMALE = "slt"  # built into Debian's flite (flite -lv)
ESPEAK_FEMALE = "f3"  # espeak-ng-data/voices/!v/f3, "female3"


class TtsError(MediaError):
    """Synthesis failed: bad input (``status`` 400) or the engine failed (503)."""


class TtsInputError(TtsError):
    status = 400


class Tts:
    def __init__(self, cache_dir: Path, *, timeout: float = TIMEOUT_S, flite: str = "flite",
                 espeak: str = "espeak-ng", sox: str = "sox",
                 max_bytes: int = wavcache.TTS_CACHE_MAX) -> None:
        self.cache_dir = Path(cache_dir)
        self._files = wavcache.cache(self.cache_dir, max_bytes)
        self.timeout = timeout
        self._flite, self._espeak, self._sox = flite, espeak, sox
        self._locks: dict[str, asyncio.Lock] = {}
        self._voices: dict[str, frozenset[str]] = {}  # engine -> the voices it has (listed once)
        self.hits = 0
        self.misses = 0

    async def say(self, text: str, *, language: str = "en", voice: str = "man") -> Path:
        """`synthesize` for a ``<Say>``: VOICE is its RCML voice, ``woman`` or ``alice`` a
        female one (see the module docstring), anything else the engine's default.
        VoiceMissing when a female voice is asked for and the engine has none."""
        if voice not in FEMALE:
            return await self.synthesize(text, language=language)
        if not _LANG_RE.match(language):  # checked before it goes into a voice name
            raise TtsInputError(f"bad language {language!r}")
        if _english(language):
            engine, wanted, name = "flite", FLITE_FEMALE, FLITE_FEMALE
        else:
            engine, wanted, name = "espeak-ng", ESPEAK_FEMALE, f"{language}+{ESPEAK_FEMALE}"
        if wanted not in await self._installed(engine):
            raise VoiceMissing(f"{engine} has no female voice ({wanted}) installed")
        return await self.synthesize(text, language=language, voice=name)

    async def synthesize(self, text: str, *, language: str = "en",
                         voice: str | None = None) -> Path:
        """Path of an 8 kHz mono 16-bit WAV speaking ``text`` (cached)."""
        text = text.replace("\x00", "").strip()
        if not text:
            raise TtsInputError("nothing to say")
        if len(text) > MAX_TEXT:
            raise TtsInputError(f"text longer than {MAX_TEXT} characters")
        if not _LANG_RE.match(language):
            raise TtsInputError(f"bad language {language!r}")
        if _english(language) and (voice is None or voice in FLITE_VOICES):
            engine, voice = "flite", voice or "kal"
        else:
            engine, voice = "espeak-ng", voice or language
            if not _ESPEAK_VOICE_RE.match(voice):
                raise TtsInputError(f"bad voice {voice!r}")
        key = hashlib.sha256("\x00".join((engine, voice, language, text)).encode()).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.wav"
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:  # two <Say> of the same text synthesise once
                if self._files.used(path):
                    self.hits += 1
                    return path
                self.misses += 1
                await self._make(engine, voice, text, path)
                return path
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    async def _make(self, engine: str, voice: str, text: str, path: Path) -> None:
        with tempfile.TemporaryDirectory(dir=_prepare_dir(self.cache_dir, path),
                                         prefix=".tts-") as tmp:
            src, raw, out = _write_text(tmp, text)
            if engine == "flite":
                native = voice in _NATIVE_8K
                await self._run(self._flite, "-voice", voice, "-f", src, "-o",
                                out if native else raw)
            else:
                native = False
                await self._run(self._espeak, "-v", voice, "-f", src, "-w", raw)
            if not native:
                await self._run(self._sox, raw, "-r", str(RATE), "-c", "1", "-b", "16", out)
            _publish(out, path, engine)
        await asyncio.to_thread(self._files.added, path)
        logger.info("- tts %s/%s: %d chars -> %s", engine, voice, len(text), path.name)

    async def _installed(self, engine: str) -> frozenset[str]:
        """The voices ENGINE has: flite's voice names, espeak-ng's variants. Listed once; a
        listing that fails is tried again next time (none of its voices is used meanwhile)."""
        known = self._voices.get(engine)
        if known is not None:
            return known
        try:
            if engine == "flite":  # "Voices available: kal awb_time kal16 awb rms slt"
                out = await self._run(self._flite, "-lv")
                known = frozenset(out.partition(":")[2].split())
            else:  # one line per variant, its file last but one: "... female3  !v/f3"
                out = await self._run(self._espeak, "--voices=variant")
                known = frozenset(re.findall(r"!v/(\S+)", out))
        except TtsError as err:
            logger.warning("x tts: the voices of %s could not be listed: %s", engine, err)
            return frozenset()
        self._voices[engine] = known
        return known

    async def _run(self, *argv: str) -> str:
        """Run ARGV under the timeout; its standard output (TtsError if it fails)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as err:
            raise TtsError(f"cannot run {argv[0]}: {err}") from err
        try:
            async with asyncio.timeout(self.timeout):
                out, err_out = await proc.communicate()
        except TimeoutError:
            raise TtsError(f"{argv[0]} timed out after {self.timeout:.0f} s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: never leave it running
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its children too (own session)
                await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            detail = err_out.decode(errors="replace").strip()[:200]
            raise TtsError(f"{argv[0]} exited {proc.returncode}: {detail}")
        return out.decode(errors="replace")


def _english(language: str) -> bool:
    return language.split("-")[0].lower() == "en"


# Small local file operations, kept out of the coroutines: fast, and not worth a thread.


def _prepare_dir(cache_dir: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return cache_dir


def _write_text(tmp: str, text: str) -> tuple[str, str, str]:
    src = os.path.join(tmp, "text.txt")
    with open(src, "w", encoding="utf-8") as f:
        f.write(text)  # a file, so no text is ever taken for a command-line option
    return src, os.path.join(tmp, "raw.wav"), os.path.join(tmp, "out.wav")


def _publish(out: str, path: Path, engine: str) -> None:
    if not os.path.exists(out) or os.path.getsize(out) <= 44:  # 44 = a bare WAV header
        raise TtsError(f"{engine} produced no audio")
    os.replace(out, path)
