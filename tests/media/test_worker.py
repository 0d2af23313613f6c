"""A real pjsua2 worker process against pjsua2 test phones (separate processes), on loopback.

Audio is checked by what the far end recorded: the share of its energy at the expected
frequency (Goertzel) and its RMS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.media import protocol as p
from appliance.media.engine import CommandFailed
from tests.media.audio import analyse, write_tone
from tests.media.conftest import Worker, start_worker, stop_worker

pytest.importorskip("pjsua2")


async def test_answer_play_and_receive_dtmf(worker: Worker, phones, tmp_path: Path) -> None:
    tone = write_tone(tmp_path / "1k.wav", 1000, 1.0)
    heard = tmp_path / "heard.wav"
    phone = await phones("--call", worker.uri, "--header", "X-Leg-Id:CAtest1",
                         "--header", "X-Account:AC1", "--record", str(heard),
                         "--dtmf", "123#", "--dtmf-delay", "0.3", "--hold", "3")
    incoming = await worker.leg("incoming")
    assert incoming.leg == "CAtest1"  # the front door's X-Leg-Id names the leg
    assert incoming.headers["X-Account"] == "AC1"
    assert incoming.from_uri.startswith("<sip:phone@127.0.0.1")
    assert incoming.call_id
    await worker.cmd(p.Answer(leg="CAtest1"))
    await worker.cmd(p.Play(leg="CAtest1", file=str(tone), loop=2))
    await worker.leg("answered", "CAtest1")
    done = await worker.events.wait_for(lambda e: isinstance(e, p.PlayDone), 5)
    assert done == p.PlayDone(leg="CAtest1", file=str(tone), interrupted=False)
    ended = await worker.leg("ended", "CAtest1")
    assert ended.code == 200
    await phone.finish()
    digits = "".join(e.digit for e in worker.events.of(p.DtmfEvent, leg="CAtest1"))
    assert digits == "123#"
    assert {e.method for e in worker.events.of(p.DtmfEvent)} == {"rfc2833"}
    share, level = analyse(heard, 1000)
    assert share > 0.8 and level > 1000, (share, level)


async def test_record_what_the_caller_says(worker: Worker, phones, tmp_path: Path) -> None:
    rec = tmp_path / "rec.wav"
    phone = await phones("--call", worker.uri, "--tone", "440", "--hold", "2.5")
    leg = (await worker.leg("incoming")).leg
    await worker.cmd(p.Answer(leg=leg))
    await worker.cmd(p.RecordStart(leg=leg, file=str(rec), max_seconds=1.5))
    done = await worker.events.wait_for(lambda e: isinstance(e, p.RecordDone), 5)
    assert done.reason == "max-seconds"
    assert 1.2 <= done.duration <= 1.8, done
    share, level = analyse(rec, 440)
    assert share > 0.8 and level > 1000, (share, level)
    await worker.leg("ended", leg)
    await phone.finish()


async def test_dial_a_phone_and_send_dtmf(worker: Worker, phones, tmp_path: Path) -> None:
    tone = write_tone(tmp_path / "tone.wav", 700, 1.0)
    heard = tmp_path / "heard.wav"
    phone = await phones("--answer", "--once", "--record", str(heard), "--hold", "2")
    port = await phone.port()
    await worker.cmd(p.Dial(leg="CAout", uri=f"sip:bob@127.0.0.1:{port}",
                            headers={"X-Trace": "t1"}))
    answered = await worker.leg("answered", "CAout")
    assert answered.code == 200
    await worker.cmd(p.Play(leg="CAout", file=str(tone), loop=0))  # until stopped
    await asyncio.sleep(1.2)
    await worker.cmd(p.Stop(leg="CAout"))
    stopped = await worker.events.wait_for(lambda e: isinstance(e, p.PlayDone), 2)
    assert stopped.interrupted
    # After the tone: RFC 2833 packets replace audio packets while a digit is sent.
    await worker.cmd(p.SendDtmf(leg="CAout", digits="45"))
    ended = await worker.leg("ended", "CAout")
    assert ended.code == 200
    await phone.finish()
    assert phone.digits() == "45"
    share, _ = analyse(heard, 700)
    assert share > 0.8


async def test_dial_unreachable_and_ring_timeout(worker: Worker, phones) -> None:
    # A phone that never answers: it is not running, so nothing replies; the leg gives up.
    port = 9  # discard: nothing listens
    await worker.cmd(p.Dial(leg="CAnone", uri=f"sip:x@127.0.0.1:{port}", timeout=1.0,
                            username="alice", password="secret"))  # a credentials account
    ended = await worker.leg("ended", "CAnone", seconds=6)
    assert ended.code in (408, 487, 503), ended
    with pytest.raises(CommandFailed) as info:
        await worker.cmd(p.Dial(leg="CAbad", uri="sip:nohost.invalid;transport=carrier"))
    assert info.value.code == "dial-failed"


async def test_bridge_two_callers(worker: Worker, phones, tmp_path: Path) -> None:
    await _two_callers_hear_each_other(worker, phones, tmp_path, conference=False)


async def test_conference_room(worker: Worker, phones, tmp_path: Path) -> None:
    await _two_callers_hear_each_other(worker, phones, tmp_path, conference=True)


async def _two_callers_hear_each_other(worker: Worker, phones, tmp_path: Path, *,
                                       conference: bool) -> None:
    a_heard, b_heard = tmp_path / "a.wav", tmp_path / "b.wav"
    a = await phones("--call", worker.uri, "--header", "X-Leg-Id:A", "--tone", "600",
                     "--record", str(a_heard), "--hold", "3")
    b = await phones("--call", worker.uri, "--header", "X-Leg-Id:B", "--tone", "1400",
                     "--record", str(b_heard), "--hold", "3")
    await worker.leg("incoming", "A")
    await worker.leg("incoming", "B")
    await worker.cmd(p.Answer(leg="A"))
    await worker.cmd(p.Answer(leg="B"))
    if conference:
        await worker.cmd(p.ConfJoin(leg="A", room="r1"))
        await worker.cmd(p.ConfJoin(leg="B", room="r1"))
    else:
        await worker.cmd(p.Bridge(leg="A", other="B"))
    await a.finish()
    await b.finish()
    share_a, _ = analyse(a_heard, 1400)
    share_b, _ = analyse(b_heard, 600)
    assert share_a > 0.8 and share_b > 0.8, (share_a, share_b)


async def test_fifth_call_is_refused(worker: Worker, phones) -> None:
    four = await phones("--call", worker.uri, "--calls", "4", "--timeout", "4")
    for _ in range(4):
        await worker.leg("incoming")
    await worker.events.wait_for(
        lambda e: len(worker.events.of(p.LegEvent, state="incoming")) == 4)
    fifth = await phones("--call", worker.uri, "--timeout", "4")
    await fifth.events.wait_for(
        lambda e: e["event"] == "state" and e["state"] == "DISCONNECTED", 8)
    assert fifth.states()[-1] == ("DISCONNECTED", 486)  # pjsua's own cap: 486 Busy Here
    for leg in worker.events.of(p.LegEvent, state="incoming"):
        await worker.cmd(p.Reject(leg=leg.leg, code=503))
    await fifth.finish()
    await four.finish()
    assert len(worker.events.of(p.LegEvent, state="ended")) == 4


async def test_own_cap_answers_503(sock_dir: Path, phones) -> None:
    w = await start_worker(sock_dir, max_calls=1)
    try:
        first = await phones("--call", w.uri, "--timeout", "3")
        await w.leg("incoming")
        second = await phones("--call", w.uri, "--timeout", "3")
        err = await w.events.wait_for(lambda e: isinstance(e, p.ErrorEvent), 8)
        assert err.code == "no-slot"
        await second.events.wait_for(
            lambda e: e["event"] == "state" and e["state"] == "DISCONNECTED", 8)
        assert second.states()[-1] == ("DISCONNECTED", 503)
        with pytest.raises(CommandFailed) as info:
            await w.cmd(p.Dial(leg="X", uri="sip:a@127.0.0.1:9"))
        assert info.value.code == "no-slot"
        await w.cmd(p.Reject(leg=(await w.leg("incoming")).leg, code=486))
        await first.finish()
        await second.finish()
    finally:
        await stop_worker(w)


async def test_bad_commands_get_error_replies(worker: Worker, tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        await worker.cmd(p.Hangup(leg="nope"))
    assert info.value.code == "no-such-leg"
    # Raw frames: an unknown op with an id gets an error reply; garbage gets an error event.
    reader, writer = await asyncio.open_unix_connection(
        str(Path(worker.stderr).with_name("w.sock")))
    ready = p.decode(await reader.readline())
    assert isinstance(ready, p.Ready) and ready.max_calls == 4
    writer.write(b'{"op":"explode","id":5}\n{not json\n' + b"x" * 70000 + b"\n"
                 + b'{"op":"ping","id":6}\n')
    frames = []
    while len(frames) < 4:
        frame = p.decode(await reader.readline())
        if not isinstance(frame, p.Heartbeat):
            frames.append(frame)
    assert frames[0] == p.Reply(re=5, ok=False, error="unknown-op", detail="unknown op 'explode'")
    assert isinstance(frames[1], p.ErrorEvent) and frames[1].code == "malformed"
    assert isinstance(frames[2], p.ErrorEvent) and frames[2].code == "frame-too-large"
    assert isinstance(frames[3], p.Reply) and frames[3].ok and frames[3].heartbeat_age < 1
    writer.close()
    reply = await worker.cmd(p.Ping())
    assert reply.ok


async def test_shutdown_with_a_live_call(worker: Worker, phones) -> None:
    phone = await phones("--call", worker.uri, "--tone", "500", "--timeout", "10")
    leg = (await worker.leg("incoming")).leg
    await worker.cmd(p.Answer(leg=leg))
    await worker.cmd(p.RecordStart(leg=leg, file=str(Path(worker.stderr).with_name("r.wav"))))
    await worker.leg("answered", leg)
    await worker.cmd(p.Shutdown())  # the fixture then checks exit code 0 and no abort
    async with asyncio.timeout(5):
        await worker.proc.wait()
    ended = worker.events.of(p.LegEvent, state="ended")
    assert [e.leg for e in ended] == [leg]
    assert worker.events.of(p.RecordDone)[0].reason == "hangup"
    await phone.finish()


async def test_a_worker_call_carries_no_product_name(worker: Worker) -> None:
    # The worker's INVITEs go out through the front door to a provider (the trunk) and its
    # answers reach phones: svmap must not learn what we run from them (sip.md §3).
    import re
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        port = sock.getsockname()[1]
        await worker.cmd(p.Dial(leg="CAfp", uri=f"sip:+15551234@127.0.0.1:{port}",
                                timeout=1.0))
        async with asyncio.timeout(5):
            invite = await asyncio.get_running_loop().sock_recv(sock, 65535)
        head = invite.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"INVITE ")
        names = {line.split(b":")[0].strip().lower() for line in head.split(b"\r\n")[1:]}
        assert not names & {b"user-agent", b"server", b"organization"}, head
        version = rb"(?<![\d.])\d+\.\d+\.\d+(?![\d.])"
        assert not re.search(rb"appliance|pjsua|pjsip|linux|" + version, head, re.IGNORECASE), head
        await worker.leg("ended", "CAfp", seconds=6)
    finally:
        sock.close()


@pytest.mark.parametrize("from_uri, user", [
    ("sip:+15551230000@127.0.0.1", b"+15551230000"),
    ("sip:Vodafone%20UK@127.0.0.1", b"Vodafone%20UK"),
    # pjsip unescapes ";" and "?" in a user (RFC 3261 lets them be): without the brackets,
    # the From's ";tag=x" here would be a second tag parameter of the header.
    ("sip:%22Boss%22%3Csip%3Aboss%40evil%3E%3Btag%3Dx@127.0.0.1", b'%22Boss%22%3csip'),
])
async def test_a_dialled_from_is_one_bracketed_address(worker: Worker, from_uri: str,
                                                       user: bytes) -> None:
    """The From the main process sets (a caller ID) is sent as a name-addr, <...>, so no
    character pjsip writes back unescaped can end the URI or add a header parameter."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        port = sock.getsockname()[1]
        await worker.cmd(p.Dial(leg="CAfrom", uri=f"sip:bob@127.0.0.1:{port}", timeout=1.0,
                                from_uri=from_uri))
        async with asyncio.timeout(5):
            invite = await asyncio.get_running_loop().sock_recv(sock, 65535)
        [from_] = [line for line in invite.split(b"\r\n") if line.lower().startswith(b"from:")]
        value = from_.split(b":", 1)[1].strip()
        assert value.startswith(b"<sip:" + user) and value.count(b">") == 1, from_
        params = value.split(b">", 1)[1]  # only ours: the one tag
        assert params.startswith(b";tag=") and params.count(b";") == 1, from_
        await worker.leg("ended", "CAfrom", seconds=6)
    finally:
        sock.close()


async def test_log_level_warning_keeps_info_lines_out(sock_dir: Path) -> None:
    w = await start_worker(sock_dir, name="quiet", log_level="warning")
    await stop_worker(w)
    text = w.stderr.read_text(errors="replace")
    assert "INFO" not in text and "ready" not in text, text
