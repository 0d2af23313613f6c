"""Memory a finished SIP call keeps while its transactions linger (run on demand; not part of
the test suite).

    .venv/bin/python bench/sip_linger.py [--calls 2000] [--registers 2000] [--top 15]
                                         [--depth 1] [--keep-caches]

RFC 3261 keeps a finished transaction up to 64·T1 (32 s) to absorb retransmissions, so at a
few hundred calls a second ~10,000 finished calls are alive at once: what each one holds
sets the process's peak, and CPython's arenas stay pinned at that peak after the load.

Everything runs in this process, with no socket and no load: the proxy of
``tests/sip/proxy_harness.py`` (fake sender, dict directory, real router and location), with
a CDR writer that writes nothing (CDR rows are the store's, not lingering SIP state), and
its clock kept still, so every finished transaction, call and context stays alive. Each call
is what SIPp's ``bench/sip/call-uac.xml`` sends: INVITE -> 407 -> ACK, INVITE with
Proxy-Authorization -> 100 -> 180 -> 200 -> ACK, BYE -> 200 (the callee answers 100, 180, 200
and the BYE's 200). The figure is tracemalloc's growth of the traced heap over CALLS calls
(after a warm-up, after ``gc.collect()``), divided by CALLS; the top allocations are grouped
by source line (``--depth N``: by traceback of N frames). The by-value parse caches of
``sip.headers`` (bounded, emptied after a burst) are emptied before both snapshots unless
``--keep-caches``; their share is printed separately, as is that of the digest nc-replay
tables (``digest.NonceCounts`` and the registrar's, bounded at MAX_TRACKED_NONCES), which
grow by one nonce per challenge and are counted in the figure.

REGISTERs (``--registers``, 0 to skip) go through the front door and the registrar of
``tests/sip/test_registrar.py``: 100 users, each REGISTER -> 401 -> REGISTER with
Authorization -> 200, re-registering in turn (bindings are refreshed, not added).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import sys
import tracemalloc
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sized
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from appliance.models import AccountSid, CallRecord, CallSid, CallStatus  # noqa: E402
from appliance.sip.digest import NonceCounts  # noqa: E402
from appliance.sip.headers import clear_parse_caches  # noqa: E402
from appliance.sip.message import Request, Response  # noqa: E402
from appliance.sip.proxy import Proxy  # noqa: E402
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone  # noqa: E402

WARMUP = 50


class NullCallLog:
    """A ``proxy.CallLog`` that writes nothing (the real one group-commits to the store)."""

    def __init__(self) -> None:
        self._n = 0

    def new_sid(self) -> str:
        self._n += 1
        return f"CA{self._n:032d}"

    async def opened(self, *, account_sid: str, from_: str, to: str, direction: str,
                     sid: Any = None, phone_number_sid: str | None = None) -> CallRecord:
        now = datetime.now()
        return CallRecord(
            sid=CallSid(sid or self.new_sid()), instance_id=None,
            account_sid=AccountSid(account_sid),
            parent_call_sid=None, to=to, from_=from_, phone_number_sid=phone_number_sid,
            status="queued", start_time=now, end_time=None, duration=0, price=None,
            price_unit="USD", direction=direction, answered_by=None, api_version="",
            forwarded_from=None, caller_name=None, conference_sid=None, ring_duration=None,
            date_created=now, date_updated=now)

    async def ringing(self, sid: str) -> None:
        return None

    async def answered(self, sid: str) -> None:
        return None

    async def ended(self, sid: str, status: CallStatus) -> CallRecord | None:
        return None


class NullMessageLog:
    def opened(self, **_: Any) -> str:
        return "SM0"

    async def ended(self, sid: str, **_: Any) -> None:
        return None

    async def record(self, **_: Any) -> None:
        return None


def proxy_harness() -> tuple[Harness, Phone, Phone]:
    h = Harness()
    h.proxy = Proxy(h.sender, h.directory, h.router, NullCallLog(), NullMessageLog(),
                    clock=h.clock, timer_clock=h.clock.monotonic, realm=lambda: REALM,
                    local_hosts={REALM})
    alice = h.phone("alice", "192.168.1.10", ("203.0.113.10", 40000))
    bob = h.phone("bob", "192.168.1.20", ("203.0.113.20", 41000))
    return h, alice, bob


def _one(sent: list[tuple[Request | Response, Any]], kind: type, what: str | int) -> Any:
    found = [m for m, _ in sent if isinstance(m, kind)
             and (m.method if isinstance(m, Request) else m.status) == what]
    if len(found) != 1:
        raise RuntimeError(f"expected one {what}, got {[m.start_line() for m, _ in sent]}")
    return found[0]


async def call(h: Harness, alice: Phone, bob: Phone, n: int) -> None:
    """One complete call; raises when the proxy does not behave as a call needs."""
    call_id, a_tag, b_tag = f"linger-{n}@192.168.1.10", f"a{n}", f"b{n}"
    invite = await h.authenticated(alice, "INVITE", "bob", call_id=call_id, from_tag=a_tag,
                                   body=SDP)
    to_bob: Request = _one(h.sender.take(), Request, "INVITE")
    await h.send(bob, bob.answer(to_bob, 100))
    await h.send(bob, bob.answer(to_bob, 180, to_tag=b_tag))
    ok = bob.answer(to_bob, 200, to_tag=b_tag)
    await h.send(bob, ok)
    sent = h.sender.take()
    _one(sent, Response, 180)
    ok_fwd: Response = _one(sent, Response, 200)
    routes = [("Route", r) for r in ok_fwd.get_all("record-route")]
    to = f"<sip:bob@{REALM}>;tag={b_tag}"
    await h.send(alice, alice.request("ACK", bob.contact, to=to, call_id=call_id,
                                      from_tag=a_tag, cseq=invite.cseq.number, headers=routes))
    _one(h.sender.take(), Request, "ACK")
    await h.send(alice, alice.request("BYE", bob.contact, to=to, call_id=call_id,
                                      from_tag=a_tag, headers=routes))
    bye: Request = _one(h.sender.take(), Request, "BYE")
    await h.send(bob, bob.answer(bye, 200))
    ok_bye: Response = _one(h.sender.take(), Response, 200)
    if ok_bye.cseq.method != "BYE":
        raise RuntimeError(f"expected the BYE's 200, got {ok_bye.start_line()}")


def _sizes(owner: object, names: dict[str, str]) -> list[str]:
    """``len`` of each of OWNER's tables that exists (their names change between versions)."""
    sizes = []
    for label, name in names.items():
        table = getattr(owner, name, None)
        if isinstance(table, Sized):
            sizes.append(f"{label} {len(table)}")
    return sizes


def proxy_state(proxy: Proxy) -> str:
    table = proxy._table
    kinds = Counter(f"{type(t).__name__}:{t.state.value}" for t in table)
    parts = [f"transactions {len(table)}", f"contexts {proxy.in_flight}",
             f"calls {proxy.calls}"]
    parts += _sizes(proxy, {"branches": "_branches", "late branches": "_late",
                            "targets": "_targets", "deadlines": "_deadlines"})
    parts += _sizes(table, {"timer heap": "_heap", "scheduled": "_scheduled"})
    return ", ".join(parts) + "\n    " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


def _snapshot(keep_caches: bool) -> tracemalloc.Snapshot:
    if not keep_caches:
        clear_parse_caches()
    gc.collect()
    return tracemalloc.take_snapshot()


# Not what is measured: tracemalloc's own snapshots and the source lines read to show them.
_FILTERS = [tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, linecache.__file__)]


def _show(label: str, before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int,
          *, top: int, depth: int) -> None:
    before, after = before.filter_traces(_FILTERS), after.filter_traces(_FILTERS)
    stats = after.compare_to(before, "traceback" if depth > 1 else "lineno")
    total = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    print(f"{label}: {total / count:,.0f} bytes ({blocks / count:.1f} blocks) per lingering "
          f"{'call' if 'call' in label else 'exchange'} ({total / 1e6:.2f} MB over {count:,})")
    for stat in stats[:top]:
        if stat.size_diff <= 0:
            continue
        frames = stat.traceback[-depth:] if depth > 1 else stat.traceback[:1]
        where = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(frames))
        line = linecache.getline(stat.traceback[0].filename, stat.traceback[0].lineno).strip()
        print(f"  {stat.size_diff / count:8,.0f} B {stat.count_diff / count:6.2f} blk  {where}"
              f"  {line[:70]}")


def _short(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(ROOT))
    except ValueError:
        return Path(filename).name


async def _measure(label: str, run: Callable[[int], Awaitable[None]], count: int,
                   state: Callable[[], str], forget_nonces: Callable[[], None],
                   args: argparse.Namespace) -> None:
    for n in range(WARMUP):
        await run(n)
    before = _snapshot(args.keep_caches)
    for n in range(WARMUP, WARMUP + count):
        await run(n)
    after = _snapshot(args.keep_caches)
    print(f"{label}: alive after {WARMUP + count:,}: {state()}")
    _show(label, before, after, count, top=args.top, depth=args.depth)
    unit = "call" if "call" in label else "exchange"
    if args.keep_caches:
        print(f"  of which the parse caches: {_freed(clear_parse_caches) / count:,.0f} "
              f"bytes per {unit} (bounded: 4,096 entries each; emptied after a burst)")
    print(f"  of which digest nonce counts: {_freed(forget_nonces) / count:,.0f} bytes "
          f"per {unit} (bounded: digest.MAX_TRACKED_NONCES nonces)")


def _freed(drop: Callable[[], None]) -> float:
    """Bytes the traced heap shrinks by when DROP has run (and gc after it)."""
    gc.collect()
    before = tracemalloc.take_snapshot()
    drop()
    gc.collect()
    now = tracemalloc.take_snapshot().filter_traces(_FILTERS)
    return -sum(s.size_diff for s in now.compare_to(before.filter_traces(_FILTERS), "filename"))


async def calls(args: argparse.Namespace) -> None:
    h, alice, bob = proxy_harness()

    async def run(n: int) -> None:
        await call(h, alice, bob, n)

    def forget_nonces() -> None:
        h.proxy._auth.counts = NonceCounts()

    await _measure("proxy call", run, args.calls, lambda: proxy_state(h.proxy), forget_nonces,
                   args)


async def registers(args: argparse.Namespace) -> None:
    from tests.sip.test_registrar import Harness as RegistrarHarness
    from tests.sip.test_registrar import user

    logins = [f"user{i:03d}" for i in range(100)]
    h = RegistrarHarness(*(user(login) for login in logins))

    async def run(n: int) -> None:
        final = await h.registered(logins[n % len(logins)], call_id=f"reg-{n}")
        h.sender.sent.clear()  # the test harness's sender keeps everything it sent
        if final.status != 200:
            raise RuntimeError(f"REGISTER answered {final.start_line()}")

    def state() -> str:
        parts = [f"front door transactions {h.door.transactions}"]
        parts += _sizes(h.door, {"targets": "_targets", "own timer heap": "_heap"})
        parts += _sizes(h.door._table, {"table timer heap": "_heap"})
        return ", ".join(parts)

    def forget_nonces() -> None:
        h.registrar.counts = NonceCounts()
        h.registrar._last_accepted = OrderedDict()

    await _measure("front door REGISTER", run, args.registers, state, forget_nonces, args)
    h.door.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--registers", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15, help="allocation lines to show")
    parser.add_argument("--depth", type=int, default=1,
                        help="frames per allocation site (1: group by line)")
    parser.add_argument("--keep-caches", action="store_true",
                        help="leave the parse caches in the measurement (and size them)")
    args = parser.parse_args()
    tracemalloc.start(max(args.depth, 1))
    if args.calls > 0:
        asyncio.run(calls(args))
    if args.registers > 0:
        asyncio.run(registers(args))


if __name__ == "__main__":
    main()
