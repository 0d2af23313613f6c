"""CPU per REGISTER pair through the front door, in-process: the general path against the
quick path for the common REGISTER over UDP (run on demand; not part of the test suite).

    .venv/bin/python bench/sip_register.py [--pairs 20000] [--users 1000] [--rounds 3]
                                           [--profile quick|general]

Everything runs in this process, with no socket: the front door and registrar of
``tests/sip/test_registrar.py`` (fake directory, store, sender and clock). Each pair is what
SIPp's ``bench/sip/register-users.xml`` sends: REGISTER -> 401, REGISTER with Authorization
-> 200, users taken in turn. Timed per pair is only the appliance's side, from the datagram's
bytes to the reply's bytes:

- general: ``parse_message``, the transport's Via stamp, ``FrontDoor.handle`` (validation,
  server transaction, registrar, ``Response`` serialised);
- quick: ``FrontDoor.quick`` (``register_view.PlainRegister``, the same registrar decision,
  the reply written from the request's bytes).

Building the phone's messages and its digest answers is not timed. The two paths alternate
for ``--rounds`` rounds and the best round of each is printed (the machine's other load only
ever adds time). ``--profile`` runs one path under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from appliance.sip.message import Response, parse_message, stamp_received  # noqa: E402
from appliance.sip.wire import Incoming, Target  # noqa: E402
from tests.sip.test_registrar import PASSWORD, Harness, answer, user  # noqa: E402

PHONE = ("127.0.0.1", 6000)
LOCAL = ("127.0.0.1", 5060)


class LastSent:
    """A Sender keeping the bytes of the last message sent."""

    def __init__(self) -> None:
        self.data = b""

    def send(self, message: object, target: Target, data: bytes | None = None) -> None:
        self.data = data if data is not None else bytes(message)  # type: ignore[call-overload]


def register(login: str, call_id: str, cseq: int, branch: str, auth: str | None = None
             ) -> bytes:
    lines = [
        "REGISTER sip:127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-{branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{login}@127.0.0.1>;tag={call_id}",
        f"To: <sip:{login}@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{login}@127.0.0.1:6000>",
        "Expires: 3600",
        "User-Agent: sipp-bench",
        *([f"Authorization: {auth}"] if auth else []),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Bench:
    def __init__(self, users: int) -> None:
        self.logins = [f"u{i:04d}" for i in range(users)]
        self.h = Harness(*(user(login) for login in self.logins))
        self.sent = LastSent()
        self.h.door.sender = self.sent
        self.n = 0

    async def general(self, data: bytes) -> bytes:
        request = parse_message(data)
        stamp_received(request, *PHONE, force_rport=True)  # type: ignore[arg-type]
        await self.h.door.handle(Incoming(request, "udp", PHONE, LOCAL, None))
        return self.sent.data

    async def quick(self, data: bytes) -> bytes:
        reply = self.h.door.quick(data, PHONE)
        if reply is None:
            raise RuntimeError("the quick path declined a plain REGISTER")
        return reply

    async def run(self, path: str, pairs: int, profiler: cProfile.Profile | None = None
                  ) -> float:
        """Seconds of CPU for PAIRS REGISTER pairs through PATH (phone side not counted)."""
        handle = self.general if path == "general" else self.quick
        spent = 0.0

        async def timed(data: bytes) -> bytes:
            nonlocal spent
            started = time.process_time()
            if profiler:
                profiler.enable()
            reply = await handle(data)
            if profiler:
                profiler.disable()
            spent += time.process_time() - started
            return reply

        for _ in range(pairs):
            self.n += 1
            login = self.logins[self.n % len(self.logins)]
            call_id = f"{path}-{self.n}"
            challenge = await timed(register(login, call_id, 1, f"{self.n}a"))
            parsed = parse_message(challenge)
            if not isinstance(parsed, Response) or parsed.status != 401:
                raise RuntimeError(f"expected a 401, got {challenge[:40]!r}")
            auth = answer(parsed, login, password=PASSWORD, cseq_uri="sip:127.0.0.1:5060")
            final = await timed(register(login, call_id, 2, f"{self.n}b", auth))
            if not final.startswith(b"SIP/2.0 200 "):
                raise RuntimeError(f"expected a 200, got {final[:40]!r}")
            if self.n % 500 == 0:
                await self.h.registrar.flush()
        return spent


async def main_async(args: argparse.Namespace) -> None:
    bench = Bench(args.users)
    gc.set_threshold(20_000, 20, 20)  # as the appliance runs (app.GC_THRESHOLDS)
    await bench.run("general", 500)  # warm-up: caches, bindings for every user
    await bench.run("quick", 500)
    if args.profile:
        profiler = cProfile.Profile()
        await bench.run(args.profile, args.pairs, profiler)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        bench.h.door.close()
        return
    best: dict[str, float] = {}
    for round_ in range(args.rounds):
        for path in ("general", "quick"):
            seconds = await bench.run(path, args.pairs)
            per_pair = seconds / args.pairs * 1e6
            best[path] = min(best.get(path, per_pair), per_pair)
            print(f"round {round_ + 1}: {path:<8} {per_pair:7.1f} µs of CPU per REGISTER pair",
                  flush=True)
    print(f"best: general {best['general']:.1f} µs, quick {best['quick']:.1f} µs per pair "
          f"({best['general'] / best['quick']:.2f}x)")
    bench.h.door.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=("quick", "general"))
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
