"""The floor under ``bench/sip.py``'s REGISTER figure: the least work a CPython UDP server
can do per REGISTER pair (run by ``bench/sip.py --floor``; not part of the test suite).

    .venv/bin/python bench/sip_floor_server.py PORT

Same event loop and socket calls as the appliance's transport (``loop.add_reader``, up to
64 ``recvfrom`` per wake-up, ``sendto`` on the spot), and nothing else: a REGISTER without
Authorization gets a 401 with a fixed nonce, one with Authorization a 200, an OPTIONS a 200
(``bench/sip.py`` pings before it starts). No parsing beyond slicing the lines a response
copies, no digest check, no binding, no log. Its REGISTERs per CPU-second bound what any
pure-Python registrar on this loop could reach; the gap between it and the appliance is the
registrar's own work.
"""

from __future__ import annotations

import asyncio
import socket
import sys

COPIED = (b"Via:", b"From", b"To: ", b"Call", b"CSeq")
CHALLENGE = (b'WWW-Authenticate: Digest realm="floor", nonce="0123456789abcdef", '
             b'algorithm=MD5, qop="auth"\r\n')
READ_BATCH = 64


def reply(data: bytes) -> bytes:
    """The response to DATA: 200 to an OPTIONS or an answered REGISTER, else a 401."""
    end = data.find(b"\r\n\r\n")
    copied = [line + b";tag=floor" if line[:4] == b"To: " else line
              for line in data[:end].split(b"\r\n")[1:] if line[:4] in COPIED]
    if data[:8] == b"OPTIONS " or b"\r\nAuthorization:" in data:
        status, extra = b"SIP/2.0 200 OK\r\n", b""
    else:
        status, extra = b"SIP/2.0 401 Unauthorized\r\n", CHALLENGE
    return status + b"\r\n".join(copied) + b"\r\n" + extra + b"Content-Length: 0\r\n\r\n"


def main() -> None:
    port = int(sys.argv[1])
    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    recvfrom, sendto = sock.recvfrom, sock.sendto

    def readable() -> None:
        for _ in range(READ_BATCH):
            try:
                data, address = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            sendto(reply(data), address)

    loop.add_reader(sock.fileno(), readable)
    loop.run_forever()


if __name__ == "__main__":
    main()
