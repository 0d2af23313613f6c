"""Worker composition root: arguments, the pj thread, the control socket, a clean exit.

    python -m appliance.media.worker --control /run/appliance/media-0.sock \\
        --sip-port 5070 --rtp-ports 10000-10249 --max-calls 4 --id 0

Exit codes: 0 after ``shutdown`` or SIGTERM, 1 when the pj thread died, 2 when pjsua could
not start (a port in use, a bad argument).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys

from appliance.media import protocol as p
from appliance.media.worker.legs import WorkerSettings
from appliance.media.worker.pj import PjWorker
from appliance.media.worker.server import ControlServer

logger = logging.getLogger("appliance.media.worker")

_PR_SET_PDEATHSIG = 1


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B, got {text!r}") from None
    if not sep or not 1024 <= a < b <= 65535:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return a, b


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m appliance.media.worker")
    ap.add_argument("--control", required=True, help="Unix socket path to listen on")
    ap.add_argument("--sip-port", type=int, required=True, help="UDP port on 127.0.0.1")
    ap.add_argument("--rtp-ports", type=_port_range, required=True, help="A-B")
    ap.add_argument("--max-calls", type=int, default=4)
    ap.add_argument("--id", default="0", help="worker id, used in logs and the SIP user")
    ap.add_argument("--public-address", default="", help="RTP address to bind and put in SDP")
    ap.add_argument("--pj-log-level", type=int, default=1)
    # The main process's level and format (appliance/logsetup.py), passed by the supervisor.
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                    default="info")
    ap.add_argument("--log-format", default="",
                    help="logging format (default: the main process's, tagged media-ID)")
    return ap.parse_args(argv)


def _die_with_parent() -> None:
    """An orphaned worker would hold its ports forever: follow the main process down."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    server = ControlServer(args.control)
    server.bind_loop(loop)
    settings = WorkerSettings(worker=args.id, sip_port=args.sip_port, rtp_ports=args.rtp_ports,
                              max_calls=args.max_calls, public_address=args.public_address,
                              log_level=args.pj_log_level)
    worker = PjWorker(settings, server.emit_threadsafe)
    try:
        await loop.run_in_executor(None, worker.start)
    except RuntimeError as err:
        logger.error("x %s", err)
        return 2
    stopping: set[asyncio.Task[None]] = set()

    def on_signal() -> None:
        task = asyncio.create_task(server.shutdown())
        stopping.add(task)
        task.add_done_callback(stopping.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    ready = p.Ready(pid=os.getpid(), worker=args.id, sip_port=args.sip_port,
                    rtp_ports=args.rtp_ports, max_calls=args.max_calls)
    code = await server.serve(worker, ready)
    await loop.run_in_executor(None, worker.join, 5.0)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fmt = args.log_format or f"%(levelname)s %(name)s[media-{args.id}]: %(message)s"
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format=fmt)
    _die_with_parent()
    if not 1 <= args.max_calls <= 64:
        logger.error("x --max-calls must be 1-64")
        return 2
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
