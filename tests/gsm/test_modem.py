"""The asyncio driver against the fake modem on a pty (the real serial stack runs)."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from fakes.modem import FakeModem
from fakes.pdus import deliver_pdu, status_report_pdu

from appliance.gsm.errors import ModemTimeout, SmsSendError
from appliance.gsm.modem import Modem
from appliance.gsm.pdu import DeliveryOutcome, decode_sms_deliver, encode_sms
from appliance.gsm.state import (
    DeliveryReported,
    ModemEvent,
    ModemSettings,
    ModemState,
    ModemStateChanged,
    Phase,
)
from appliance.gsm.urc import RegStatus, SimState

FAST = dict(ping_timeout=0.2, timeout_scale=0.05, reopen_delay=0.1, reopen_max_delay=0.3)


class Harness:
    def __init__(self, fake: FakeModem, link: Path) -> None:
        self.fake = fake
        self.link = link
        self.received: list[tuple[str, int | None]] = []
        self.events: list[ModemEvent] = []
        self.fail_callback = False
        self.stored_during_callback: list[bool] = []

    async def on_sms(self, pdu: str, index: int | None) -> None:
        self.stored_during_callback.append(index in self.fake.store)
        if self.fail_callback:
            raise RuntimeError("database is down")
        self.received.append((pdu, index))

    def modem(self, **settings: object) -> Modem:
        merged = {**FAST, **settings}
        return Modem(ModemSettings(str(self.link), **merged),  # type: ignore[arg-type]
                     on_sms_received=self.on_sms, on_event=self.events.append)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll state that the fake's thread changes (it has no asyncio.Event to wait on)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def ready(modem: Modem, within: float = 5.0) -> ModemState:
    async with asyncio.timeout(within):
        return await modem.wait_for(lambda s: s.phase is Phase.READY)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    link = tmp_path / "usb-Quectel_EC25-if02-port0"
    fake = FakeModem(link=link).start()
    try:
        yield Harness(fake, link)
    finally:
        fake.close()


@pytest.fixture
async def modem(harness: Harness) -> AsyncIterator[Modem]:
    async with harness.modem() as m:
        await ready(m)
        yield m


async def test_init_sequence(harness: Harness, modem: Modem) -> None:
    st = harness.fake.state
    assert (st.echo, st.cmee, st.cmgf, st.cnmi) == (False, 1, 0, "2,1,0,2,0")
    assert st.reg_n == {"CREG": 2, "CGREG": 2, "CEREG": 2}
    s = modem.state
    assert s.sim is SimState.READY and s.registration is RegStatus.HOME
    assert (s.operator, s.manufacturer, s.model) == ("Fake Telecom", "Quectel", "EC25")
    assert s.signal is not None and s.signal.dbm == -71
    assert s.smsc == "+15550000001"
    assert "AT+CMGL=4" in harness.fake.commands  # the start-up sweep


async def test_send_single(harness: Harness, modem: Modem) -> None:
    parts = encode_sms("+15551234567", "hello")
    assert await modem.send_sms(parts) == [1]
    assert harness.fake.sent == [parts[0].hex]


async def test_send_multipart_with_urcs_inside_the_exchange(harness: Harness,
                                                          modem: Modem) -> None:
    parts = encode_sms("+15551234567", "x" * 400, reference=9)
    harness.fake.interleave_next('+ZPASR: "UMTS"', '+CREG: 1,"4CA","81DE445"')
    assert await modem.send_sms(parts) == [1, 2, 3]
    assert harness.fake.sent == [p.hex for p in parts]
    assert "AT+CMMS=2" in harness.fake.commands


async def test_cms_500_is_a_failed_send_with_the_code(harness: Harness, modem: Modem) -> None:
    harness.fake.fail_next_send(500)
    with pytest.raises(SmsSendError) as info:
        await modem.send_sms(encode_sms("+15551234567", "hello"))
    assert info.value.code == 500 and info.value.failed_part == 0 and info.value.references == []
    assert modem.state.phase is Phase.READY  # an SMS error is not a modem failure


async def test_multipart_partial_failure_keeps_sent_references(harness: Harness,
                                                               modem: Modem) -> None:
    harness.fake.fail_next_send(330, after=1)  # SMSC address unknown, on part 2
    with pytest.raises(SmsSendError) as info:
        await modem.send_sms(encode_sms("+15551234567", "y" * 400, reference=3))
    assert (info.value.code, info.value.failed_part, info.value.references) == (330, 1, [1])


async def test_send_timeout_says_whether_the_pdu_was_written(harness: Harness) -> None:
    # A hang before the `> ` prompt: the PDU never left the host, so nothing can be sent.
    async with harness.modem(prompt_timeout=10.0) as modem:  # x0.05: 0.5 s
        await ready(modem)
        harness.fake.hang_at("AT+CMGS")
        with pytest.raises(SmsSendError) as info:
            await modem.send_sms(encode_sms("+15551234567", "never written"))
        assert isinstance(info.value.cause, ModemTimeout)
        assert not info.value.cause.pdu_written and harness.fake.sent == []
        async with asyncio.timeout(5):
            await modem.wait_for(lambda s: s.phase is Phase.RECOVERING)
        await ready(modem)  # the ladder's re-open cleared the hang
        # The PDU was taken, then no +CMGS in time: in doubt (the modem may have sent it).
        harness.fake.slow_next("CMGS", 4.0)  # the result timeout is 60 s x 0.05 = 3 s
        with pytest.raises(SmsSendError) as info:
            await modem.send_sms(encode_sms("+15551234567", "written"))
        assert isinstance(info.value.cause, ModemTimeout)
        assert info.value.cause.pdu_written and len(harness.fake.sent) == 1


async def test_receive_via_cmti(harness: Harness, modem: Modem) -> None:
    pdu = deliver_pdu("+15551234567", "hellohello")
    index = harness.fake.deliver_sms(pdu)
    await until(lambda: bool(harness.received))
    assert harness.received == [(pdu, index)]
    assert decode_sms_deliver(harness.received[0][0]).text == "hellohello"
    assert harness.stored_during_callback == [True]  # committed before the delete
    await until(lambda: not harness.fake.store)


async def test_receive_via_startup_sweep(harness: Harness) -> None:
    pdus = [deliver_pdu("+1555000", f"stored {i}") for i in range(3)]
    for pdu in pdus:
        harness.fake.deliver_sms(pdu, notify=False)
    async with harness.modem() as modem:
        await ready(modem)
        await until(lambda: len(harness.received) == 3)
    assert [p for p, _ in harness.received] == pdus
    assert harness.fake.store == {}


async def test_periodic_sweep_catches_a_missed_urc(harness: Harness) -> None:
    async with harness.modem(sweep_interval=0.2) as modem:
        await ready(modem)
        harness.fake.deliver_sms(deliver_pdu("+1555000", "no cmti"), notify=False)
        await until(lambda: len(harness.received) == 1)


async def test_failed_callback_keeps_the_message(harness: Harness, modem: Modem) -> None:
    harness.fail_callback = True
    index = harness.fake.deliver_sms(deliver_pdu("+1555000", "keep me"))
    await until(lambda: bool(harness.stored_during_callback))
    await asyncio.sleep(0.1)
    assert index in harness.fake.store
    assert not any(c.startswith("AT+CMGD") for c in harness.fake.commands)


@pytest.mark.parametrize("mode", ["cdsi", "cds"])
async def test_delivery_report_matched_by_reference(harness: Harness, modem: Modem,
                                                    mode: str) -> None:
    harness.fake.status_reports = mode
    [mr] = await modem.send_sms(encode_sms("+15551234567", "hi", status_report=True), tag="SM1")
    harness.fake.deliver_status_report(status_report_pdu(mr, "+15551234567", 0x00))
    await until(lambda: any(isinstance(e, DeliveryReported) for e in harness.events))
    [report] = [e for e in harness.events if isinstance(e, DeliveryReported)]
    assert (report.tag, report.part, report.outcome) == ("SM1", 0, DeliveryOutcome.DELIVERED)
    if mode == "cdsi":
        await until(lambda: not harness.fake.sr_store)
        assert harness.fake.commands[-1] == 'AT+CPMS="ME","ME","ME"'  # storage restored


async def test_ussd(modem: Modem) -> None:
    response = await modem.ussd("*100#")
    assert (response.mode, response.text) == (0, "Your balance is 5.00")


async def test_hung_modem_is_recovered(harness: Harness, modem: Modem) -> None:
    reopens = harness.fake.reopens
    harness.fake.hang()
    with pytest.raises(ModemTimeout):
        await modem.command("AT+CSQ")
    async with asyncio.timeout(5):
        await modem.wait_for(lambda s: s.phase is Phase.RECOVERING)
    await ready(modem)
    assert harness.fake.reopens > reopens  # rung 2: the re-open cleared the hang
    assert modem.state.recovery_rung == 0
    assert await modem.send_sms(encode_sms("+1555", "after")) == [1]


async def test_unsolicited_rdy_reinitialises(harness: Harness, modem: Modem) -> None:
    harness.fake.reboot()
    await until(lambda: harness.fake.state.cnmi == "2,1,0,2,0" and not harness.fake.state.echo)
    await ready(modem)
    assert harness.fake.state.cmgf == 0 and harness.fake.state.cmee == 1


async def test_device_disappears_and_reappears(harness: Harness, modem: Modem) -> None:
    harness.fake.unplug()
    async with asyncio.timeout(5):
        await modem.wait_for(lambda s: s.phase is not Phase.READY)
    await asyncio.sleep(0.3)  # absent for a while: the driver retries with back-off
    harness.fake.replug()
    await ready(modem)
    assert harness.fake.state.echo is False


async def test_refused_init_is_retried_with_back_off_then_resumes(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """SIM busy (+CMS ERROR: 314) for a while after a boot: each init attempt is followed by
    a doubling pause (0.1, 0.2, 0.4 s here; 1 s up to 30 s by default), one log line each,
    not a loop of thousands of commands; once the modem accepts, it is ready."""
    caplog.set_level(logging.INFO, logger="appliance.gsm")
    fake = harness.fake
    fake.refuse("AT+CPMS", "+CMS ERROR: 314")
    async with harness.modem(reopen_delay=0.1, reopen_max_delay=0.4) as modem:
        await asyncio.sleep(2.0)
        inits = [t for c, t in zip(fake.commands, fake.command_times, strict=True)
                 if c == "ATE0"]
        assert 3 <= len(inits) <= 9, len(inits)  # 0, .1, .3, .7, 1.1, 1.5, 1.9 s
        assert len(fake.commands) < 25 * len(inits)
        assert inits[-1] - inits[-2] > 0.3  # the pause grew to its cap
        assert modem.state.phase is not Phase.READY
        assert "314" in (modem.state.last_error or "")
        assert len(caplog.records) <= len(inits) + 3  # one line per attempt, not per command
        fake.refuse("AT+CPMS", None)  # the SIM is ready now
        state = await ready(modem, within=2.0)
        assert state.last_error is None and state.recovery_rung == 0
        assert await modem.send_sms(encode_sms("+1555", "after the SIM woke up")) == [1]


async def test_wrong_pin_is_never_retried(tmp_path: Path) -> None:
    link = tmp_path / "modem"
    with FakeModem(link=link, pin="1234") as fake:
        h = Harness(fake, link)
        async with h.modem(pin="0000") as modem:
            async with asyncio.timeout(5):
                state = await modem.wait_for(lambda s: s.phase is Phase.SIM_LOCKED)
            assert state.sim is SimState.SIM_PIN and "PIN rejected" in (state.last_error or "")
            fake.reboot()  # a re-init must not try the same PIN again
            await until(lambda: fake.commands.count("AT+CPIN?") >= 2)
            await asyncio.sleep(0.1)
            assert fake.pin_attempts == ["0000"]
            assert await modem.enter_pin("1234") is SimState.READY
            await ready(modem)
            assert fake.pin_attempts == ["0000", "1234"]


async def test_correct_pin(tmp_path: Path) -> None:
    link = tmp_path / "modem"
    with FakeModem(link=link, pin="1234") as fake:
        async with Harness(fake, link).modem(pin="1234") as modem:
            state = await ready(modem)
            assert state.sim is SimState.READY and fake.pin_attempts == ["1234"]


def rungs_seen(harness: Harness) -> list[int]:
    return [e.state.recovery_rung for e in harness.events if isinstance(e, ModemStateChanged)]


async def test_radio_cycle_rung_recovers_a_modem_a_reopen_does_not(
        harness: Harness, modem: Modem) -> None:
    harness.fake.hang(clears_on="AT+CFUN=0")
    with pytest.raises(ModemTimeout):
        await modem.command("AT+CSQ")
    async with asyncio.timeout(5):
        await modem.wait_for(lambda s: s.phase is Phase.RECOVERING)
    async with asyncio.timeout(10):
        await modem.wait_for(lambda s: s.phase is Phase.READY and not s.recovery_rung)
    rungs = rungs_seen(harness)  # every state change, not a sample that could miss a rung
    assert 3 in rungs and 4 not in rungs  # re-open (rung 2) was not enough; the radio cycle was
    assert "AT+CFUN=0" in harness.fake.commands
    assert await modem.send_sms(encode_sms("+1555", "after the radio cycle"))


async def test_reboot_rung_recovers_a_modem_only_a_reset_revives(
        harness: Harness, modem: Modem) -> None:
    harness.fake.hang(clears_on="AT+CFUN=1,1")
    with pytest.raises(ModemTimeout):
        await modem.command("AT+CSQ")
    async with asyncio.timeout(5):
        await modem.wait_for(lambda s: s.phase is Phase.RECOVERING)
    async with asyncio.timeout(15):
        await modem.wait_for(lambda s: s.phase is Phase.READY and not s.recovery_rung)
    assert 4 in rungs_seen(harness)
    assert "AT+CFUN=1,1" in harness.fake.commands
    assert await modem.send_sms(encode_sms("+1555", "after the reboot"))


async def test_a_clean_close_logs_no_lost_port(harness: Harness,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Closing the port at a stop is ours: only a device that goes away is "port lost"."""
    caplog.set_level(logging.DEBUG, logger="appliance.gsm")
    async with harness.modem() as m:
        await ready(m)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text[-2000:]


async def test_the_modem_works_on_a_descriptor_past_1023(harness: Harness) -> None:
    # With LimitNOFILE above 1024, a connection flood can leave the modem's port (re)opened
    # on a descriptor of 1024 or more, which select() cannot take: pyserial's own read and
    # write use it, and every read raised while the loop spun. The port is read without it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard open-file limit {hard} leaves no descriptor past 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    spare: list[int] = []
    try:
        while not spare or spare[-1] < 1100:
            spare.append(os.open(os.devnull, os.O_RDONLY))
        async with harness.modem() as m:
            state = await ready(m)
            assert state.phase is Phase.READY
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
