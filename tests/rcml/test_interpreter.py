"""The interpreter driven through whole scripted calls: a fake runner answers each Action."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.rcml.interpreter import (
    _TRANSITIONS,
    Action,
    CallEnded,
    CollectDigits,
    DialAction,
    DialDone,
    DialStatus,
    DigitsCollected,
    DocumentFetched,
    Done,
    FetchDocument,
    FetchFailed,
    Finished,
    GatherEnd,
    HangupAction,
    Interpreter,
    InterpreterError,
    PauseAction,
    PlayAction,
    RecordAction,
    RecordingDone,
    RejectAction,
    SayAction,
    SendSms,
    SmsQueued,
)
from appliance.rcml.parse import parse_voice
from appliance.rcml.verbs import Client, Document, Number, Warning

DATA = Path(__file__).parents[1] / "data" / "rcml"
APP = "http://app.example.com/ivr/welcome"
CALL = "CA" + "1" * 32
BASE = {"AccountSid": "AC" + "2" * 32, "From": "+15550001111", "To": "+15550002222",
        "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2012-04-24"}


def xml(name: str) -> bytes:
    return (DATA / name).read_bytes()


class Call:
    """Holds one interpreter and a fake clock; `step` feeds a result and returns the action."""

    def __init__(self, doc: bytes | Document, **kwargs: int) -> None:
        document = doc if isinstance(doc, Document) else parse_voice(doc)
        self.now = 1000.0
        self.interp = Interpreter(document, call_sid=CALL, base_params=BASE, document_url=APP,
                                  **kwargs)

    def start(self) -> Action:
        return self.interp.start(self.now)

    def step(self, result: object) -> Action:
        self.now += 1.0
        return self.interp.resume(result, self.now)  # type: ignore[arg-type]


def fetched(name: str) -> DocumentFetched:
    return DocumentFetched(xml(name), "text/xml; charset=utf-8")


def only(action: Action, kind: type) -> Action:
    assert isinstance(action, kind), action
    return action


# -- the IVR ---------------------------------------------------------------------------------


def test_ivr_say_gather_dial_hangup() -> None:
    call = Call(xml("ivr_welcome.xml"))
    assert call.start() == SayAction("Welcome to Example Corp.")
    gather = call.step(Done())
    assert gather == CollectDigits(prompts=(SayAction("Press 1 for sales, 2 for support."),),
                                   timeout=5, finish_on_key="#", num_digits=1)

    fetch = call.step(DigitsCollected("1", GatherEnd.NUM_DIGITS))
    assert isinstance(fetch, FetchDocument)
    assert (fetch.url, fetch.method) == ("http://app.example.com/ivr/menu", "POST")
    assert fetch.params == {**BASE, "CallSid": CALL, "Digits": "1"}

    assert call.step(fetched("ivr_sales.xml")) == SayAction("Connecting you to sales.")
    dial = call.step(Done())
    assert dial == DialAction(nouns=(Client("sales"),), timeout=20, time_limit=14400,
                              caller_id=None, record=False)

    fetch = call.step(DialDone(DialStatus.NO_ANSWER, None, 0))
    assert isinstance(fetch, FetchDocument)
    assert fetch.url == "http://app.example.com/ivr/dialed"
    assert fetch.params == {**BASE, "CallSid": CALL, "DialCallStatus": "no-answer",
                            "DialCallSid": "null", "DialCallDuration": "0"}

    assert call.step(fetched("ivr_dialed.xml")) == SayAction("Sales is not available. Goodbye.")
    assert call.step(Done()) == HangupAction()
    assert call.step(Done()) == Finished()
    assert call.interp.state is Interpreter.State.FINISHED
    assert call.interp.started_at == 1000.0 and call.interp.last_step_at == call.now


def test_dial_completed_parameters() -> None:
    call = Call(b'<Response><Dial action="done" record="true">+15553334444</Dial></Response>')
    assert call.start() == DialAction((Number("+15553334444"),), record=True)
    fetch = only(call.step(DialDone(DialStatus.COMPLETED, "CA" + "9" * 32, 42,
                                    recording_url="http://h/RE1.wav", ring_duration=3)),
                 FetchDocument)
    assert isinstance(fetch, FetchDocument)
    assert fetch.url == "http://app.example.com/ivr/done"
    assert {k: fetch.params[k] for k in ("DialCallStatus", "DialCallSid", "DialCallDuration",
                                         "RecordingUrl", "DialRingDuration")} == {
        "DialCallStatus": "completed", "DialCallSid": "CA" + "9" * 32,
        "DialCallDuration": "42", "RecordingUrl": "http://h/RE1.wav", "DialRingDuration": "3"}


def test_dial_without_action_continues() -> None:
    call = Call(b"<Response><Dial>client:bob</Dial><Say>after</Say></Response>")
    assert call.start() == DialAction((Client("bob"),))
    assert call.step(DialDone(DialStatus.BUSY)) == SayAction("after")


def test_dial_ended_by_the_hang_up_reports_and_runs_nothing_after() -> None:
    call = Call(b'<Response><Dial action="done"><Client>bob</Client></Dial>'
                b'<Say>not said</Say></Response>')
    call.start()
    fetch = only(call.step(DialDone(DialStatus.COMPLETED, "CA" + "9" * 32, 5, hung_up=True)),
                 FetchDocument)
    assert isinstance(fetch, FetchDocument) and fetch.params["DialCallStatus"] == "completed"
    redial = b"<Response><Dial><Client>carol</Client></Dial></Response>"
    assert call.step(DocumentFetched(redial)) == Finished()
    # without an action, the next verb is not run either
    call = Call(b"<Response><Dial><Client>bob</Client></Dial><Say>after</Say></Response>")
    call.start()
    assert call.step(DialDone(DialStatus.CANCELED, hung_up=True)) == Finished()


# -- Gather --------------------------------------------------------------------------------------


def test_gather_timeout_without_digits_continues_with_next_verb() -> None:
    call = Call(xml("ivr_welcome.xml"))
    call.start()
    only(call.step(Done()), CollectDigits)
    assert call.step(DigitsCollected("", GatherEnd.TIMEOUT)) == \
        SayAction("We did not receive any input. Goodbye.")
    assert call.step(Done()) == HangupAction()


def test_gather_only_finish_key_sends_no_request() -> None:
    call = Call(b'<Response><Gather action="/g"/><Say>next</Say></Response>')
    only(call.start(), CollectDigits)
    assert call.step(DigitsCollected("#", GatherEnd.FINISH_KEY)) == SayAction("next")


def test_gather_strips_the_finish_key() -> None:
    call = Call(b'<Response><Gather action="/g" finishOnKey="*#"/></Response>')
    call.start()
    fetch = only(call.step(DigitsCollected("1234*", GatherEnd.FINISH_KEY)), FetchDocument)
    assert isinstance(fetch, FetchDocument) and fetch.params["Digits"] == "1234"
    assert fetch.url == "http://app.example.com/g"


def test_gather_without_action_continues_even_with_digits() -> None:
    """Restcomm, not Twilio: no action → the next verb, no request."""
    call = Call(b"<Response><Gather numDigits='2'/><Pause length='3'/></Response>")
    call.start()
    assert call.step(DigitsCollected("42", GatherEnd.NUM_DIGITS)) == PauseAction(3)
    assert call.step(Done()) == Finished()


def test_gather_speech_result_and_get() -> None:
    call = Call(b'<Response><Gather input="speech" action="http://x/s" method="GET"/>'
                b"</Response>")
    call.start()
    fetch = only(call.step(DigitsCollected("", GatherEnd.TIMEOUT, speech_result="sales")),
                 FetchDocument)
    assert isinstance(fetch, FetchDocument)
    assert (fetch.method, fetch.params["Digits"], fetch.params["SpeechResult"]) == \
        ("GET", "", "sales")


def test_gather_hangup_with_digits_reports_then_finishes() -> None:
    call = Call(b'<Response><Gather action="/g"/><Say>never</Say></Response>')
    call.start()
    only(call.step(DigitsCollected("12", GatherEnd.HANGUP)), FetchDocument)
    assert call.step(fetched("hangup.xml")) == Finished()


# -- Record --------------------------------------------------------------------------------------


def test_record_with_finish_on_key() -> None:
    call = Call(xml("voicemail.xml"))
    only(call.start(), SayAction)
    assert call.step(Done()) == RecordAction(timeout=5, finish_on_key="#", max_length=120,
                                             play_beep=True)
    fetch = call.step(RecordingDone("file:///var/rec/RE1.wav", 4, "#",
                                    public_url="http://h/restcomm/recordings/RE1.wav"))
    assert isinstance(fetch, FetchDocument)
    assert fetch.url == "http://app.example.com/voicemail/saved"
    assert fetch.params == {**BASE, "CallSid": CALL, "RecordingUrl": "file:///var/rec/RE1.wav",
                            "PublicRecordingUrl": "http://h/restcomm/recordings/RE1.wav",
                            "RecordingDuration": "4.0", "Digits": "#"}
    assert call.step(fetched("hangup.xml")) == HangupAction()


def test_record_hangup_requests_action_but_runs_nothing_after() -> None:
    call = Call(xml("voicemail.xml"))
    call.start()
    call.step(Done())
    fetch = only(call.step(RecordingDone("file:///r.wav", 2.5, "hangup")), FetchDocument)
    assert isinstance(fetch, FetchDocument) and fetch.params["Digits"] == "hangup"
    assert fetch.params["RecordingDuration"] == "2.5"
    assert call.step(fetched("say.xml")) == Finished()


def test_record_without_action_continues() -> None:
    call = Call(b"<Response><Record finishOnKey='-1'/><Say>bye</Say></Response>")
    assert call.start() == RecordAction(timeout=5, finish_on_key="", max_length=3600)
    assert call.step(RecordingDone("u", 1.0)) == SayAction("bye")


# -- budgets -----------------------------------------------------------------------------------


def test_redirect_loop_hits_the_budget() -> None:
    call = Call(xml("redirect_loop.xml"), max_redirects=10)
    action = call.start()
    fetches = 0
    while isinstance(action, FetchDocument):
        fetches += 1
        assert action.url == "http://app.example.com/loop"
        assert action.params == {**BASE, "CallSid": CALL}
        action = call.step(fetched("redirect_loop.xml"))
    assert fetches == 10
    assert isinstance(action, Finished) and action.error_code == 12300
    assert "redirect" in action.message
    assert call.step(Done()) == action  # finished stays finished


def test_call_activity_resets_the_redirect_budget_but_verbs_are_bounded() -> None:
    loop = b"<Response><Say>hold on</Say><Redirect>/loop</Redirect></Response>"
    call = Call(loop, max_redirects=2, max_verbs=50)
    action = call.start()
    verbs = 0
    while not isinstance(action, Finished):
        verbs += 1
        result = DocumentFetched(loop) if isinstance(action, FetchDocument) else Done()
        action = call.step(result)
    assert verbs == 50
    assert action.error_code == 12300 and "verbs" in action.message


# -- other verbs ---------------------------------------------------------------------------------


def test_reject_is_terminal() -> None:
    call = Call(b'<Response><Reject reason="busy"/><Say>never</Say></Response>')
    assert call.start() == RejectAction(486)
    assert call.step(Done()) == Finished()
    assert Call(b"<Response><Reject/></Response>").start() == RejectAction(603)


def test_sms_defaults_and_action() -> None:
    call = Call(b'<Response><Sms action="/sent" statusCallback="/st">hi</Sms></Response>')
    assert call.start() == SendSms("hi", to="+15550001111", from_="+15550002222",
                                   status_callback="http://app.example.com/st")
    fetch = only(call.step(SmsQueued("SM" + "3" * 32)), FetchDocument)
    assert isinstance(fetch, FetchDocument)
    assert (fetch.params["SmsSid"], fetch.params["SmsStatus"]) == ("SM" + "3" * 32, "sending")


def test_sms_not_queued_continues() -> None:
    call = Call(b"<Response><Sms to='+1'>hi</Sms><Hangup/></Response>")
    assert call.start() == SendSms("hi", to="+1", from_="+15550002222")
    assert call.step(Done()) == HangupAction()


def test_sms_not_queued_reports_failed_to_its_action() -> None:
    # No modem, a refused number...: nothing was queued, so nothing is "sending" (the
    # Restcomm docs' action values are sent and failed) and there is no SmsSid.
    call = Call(b'<Response><Sms to="+1" action="/sent">hi</Sms></Response>')
    call.start()
    fetch = only(call.step(Done()), FetchDocument)
    assert isinstance(fetch, FetchDocument)
    assert fetch.params["SmsStatus"] == "failed" and "SmsSid" not in fetch.params


def test_empty_sms_stops_with_14103() -> None:
    call = Call(b"<Response><Sms/><Say>never</Say></Response>")
    assert call.start() == Finished(14103, "<Sms> without a body")


def test_relative_urls_and_prompts() -> None:
    call = Call(xml("play.xml"))
    assert call.start() == PlayAction("http://example.com/hello.wav", 1)
    assert call.step(Done()) == PlayAction("http://app.example.com/music/hold.wav", 0)


def test_dial_noun_urls_are_resolved() -> None:
    call = Call(xml("dial_nouns.xml"))
    dial = only(call.start(), DialAction)
    assert isinstance(dial, DialAction)
    number = dial.nouns[0]
    assert isinstance(number, Number)
    assert (number.url, number.status_callback) == ("http://app.example.com/screen",
                                                   "http://app.example.com/status")


def test_fetched_text_and_audio() -> None:
    call = Call(b"<Response><Redirect>/t</Redirect></Response>")
    call.start()
    assert call.step(DocumentFetched(b"Hello there", "text/plain")) == SayAction("Hello there")
    assert call.step(Done()) == Finished()
    call = Call(b"<Response><Redirect>/a.wav</Redirect></Response>")
    call.start()
    assert call.step(DocumentFetched(b"RIFF", "audio/x-wav")) == \
        PlayAction("http://app.example.com/a.wav")


# -- failures and protocol misuse ----------------------------------------------------------------


def test_fetch_failure_and_bad_documents_finish_with_the_code() -> None:
    for result, code in ((FetchFailed("HTTP 500"), 11200),
                         (DocumentFetched(b"<Reply/>"), 12100),
                         (DocumentFetched(b"{}", "application/json"), 12300)):
        call = Call(b"<Response><Redirect>/next</Redirect></Response>")
        only(call.start(), FetchDocument)
        done = call.step(result)
        assert isinstance(done, Finished) and done.error_code == code
        assert "http://app.example.com/next" in done.message
        assert (done.url, done.method) == ("http://app.example.com/next", "POST")


def test_call_ended_finishes_from_any_state() -> None:
    call = Call(xml("ivr_welcome.xml"))
    call.start()
    assert call.step(CallEnded()) == Finished()


def test_warnings_of_every_document_are_reported_once() -> None:
    call = Call(b'<Response><Say voice="robot">a</Say><Redirect>/n</Redirect></Response>')
    call.start()
    first = call.interp.take_warnings()
    assert [w.code for w in first] == [12200]
    call.step(Done())
    call.step(fetched("bad_attributes.xml"))
    later = call.interp.take_warnings()
    assert 13310 in [w.code for w in later] and all(isinstance(w, Warning) for w in later)
    assert call.interp.take_warnings() == ()


def test_update_params() -> None:
    call = Call(b"<Response><Redirect>/n</Redirect></Response>")
    call.interp.update_params({"CallStatus": "completed", "CallSid": "forged"})
    fetch = only(call.start(), FetchDocument)
    assert isinstance(fetch, FetchDocument)
    assert (fetch.params["CallStatus"], fetch.params["CallSid"]) == ("completed", CALL)


def test_misuse_raises() -> None:
    call = Call(xml("say.xml"))
    with pytest.raises(InterpreterError):
        call.step(Done())  # before start
    call.start()
    with pytest.raises(InterpreterError):
        call.start()
    with pytest.raises(InterpreterError):
        call.step(DigitsCollected("1", GatherEnd.NUM_DIGITS))  # nobody asked for digits


def test_empty_document_finishes() -> None:
    assert Call(b"<Response/>").start() == Finished()


def test_every_waiting_state_has_a_row() -> None:
    states = {state for state, _ in _TRANSITIONS}
    waiting = set(Interpreter.State) - {Interpreter.State.NEW, Interpreter.State.FINISHED}
    assert states == waiting
