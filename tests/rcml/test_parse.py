"""parse_voice / parse_document / parse_response against the documents in tests/data/rcml."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.rcml.parse import (
    MAX_DOCUMENT,
    MAX_ELEMENTS,
    MAX_VERBS,
    RcmlError,
    parse_document,
    parse_response,
    parse_voice,
)
from appliance.rcml.verbs import (
    Client,
    Conference,
    Dial,
    Document,
    Gather,
    GatherInput,
    Hangup,
    Number,
    Pause,
    Play,
    Record,
    RecordMedia,
    Redirect,
    Reject,
    RejectReason,
    Say,
    Sip,
    Sms,
    Unsupported,
    Voice,
    Warning,
)

DATA = Path(__file__).parents[1] / "data" / "rcml"


def load(name: str) -> Document:
    return parse_voice((DATA / name).read_bytes())


def codes(doc: Document) -> list[int]:
    return [w.code for w in doc.warnings]


# -- one document per verb: defaults and explicit values ------------------------------------


def test_say() -> None:
    doc = load("say.xml")
    assert doc.verbs == (Say("Hello world", Voice.MAN, "en", 1),
                         Say("Hola", Voice.WOMAN, "es", 3))
    assert doc.warnings == ()


def test_play() -> None:
    assert load("play.xml").verbs == (Play("http://example.com/hello.wav", 1),
                                      Play("/music/hold.wav", 0))


def test_pause_defaults_to_one_second() -> None:
    assert load("pause.xml").verbs == (Pause(1), Pause(7))


def test_gather_defaults_and_values() -> None:
    first, second = load("gather.xml").verbs
    assert first == Gather(action=None, method="POST", timeout=5, finish_on_key="#",
                           num_digits=None, input=GatherInput.DTMF, language="en-US",
                           hints=(), nested=(Say("Press a key"),))
    assert second == Gather(action="/menu", method="GET", timeout=10, finish_on_key="*",
                            num_digits=4, input=GatherInput.DTMF_SPEECH, language="fr-FR",
                            hints=("sales", "support"),
                            nested=(Play("http://example.com/menu.wav"), Pause(2),
                                    Say("Enter your PIN", voice=Voice.WOMAN)))


def test_record_defaults_and_values() -> None:
    default, explicit, keys = load("record.xml").verbs
    assert default == Record(action=None, method="POST", timeout=5,
                             finish_on_key="1234567890*#", max_length=3600, play_beep=True,
                             transcribe=False, media=RecordMedia.AUDIO_ONLY)
    assert explicit == Record(action="http://example.com/recorded", method="GET", timeout=3,
                              finish_on_key="", max_length=60, play_beep=False,
                              transcribe=True, transcribe_callback="/transcribed",
                              media=RecordMedia.AUDIO_VIDEO)
    assert isinstance(keys, Record) and keys.finish_on_key == "#*"


def test_dial_with_nouns() -> None:
    (dial,) = load("dial_nouns.xml").verbs
    assert dial == Dial(
        nouns=(Number("+15551234567", send_digits="ww123", url="/screen",
                      status_callback="/status",
                      status_callback_event=("initiated", "answered")),
               Client("alice", url="/client-screen", method="GET"),
               Sip("sip:bob@example.com", username="bob", password="secret")),
        action="/dialed", method="GET", timeout=20, time_limit=600,
        caller_id="+15550001111", record=True)


def test_dial_defaults() -> None:
    (dial,) = load("dial_defaults.xml").verbs
    assert dial == Dial((Number("+15551234567"),), action=None, method="POST", timeout=30,
                        time_limit=14400, caller_id=None, record=False)


def test_dial_text_body_rules() -> None:
    """Restcomm: "@" → Sip, starts with "client" → Client, else Number."""
    nouns = [d.nouns for d in load("dial_text.xml").verbs if isinstance(d, Dial)]
    assert nouns == [(Number("+15551234567"),), (Client("alice"),),
                     (Sip("sip:bob@example.com"),), (Sip("sip:carol@example.com"),)]


def test_conference() -> None:
    first, second = (d.nouns[0] for d in load("conference.xml").verbs if isinstance(d, Dial))
    assert first == Conference("room1", muted=False, beep=True, start_conference_on_enter=True,
                               end_conference_on_exit=False, wait_url=None, wait_method="POST",
                               max_participants=40)
    assert second == Conference("room2", muted=True, beep=False,
                                start_conference_on_enter=False, end_conference_on_exit=True,
                                wait_url="/wait", wait_method="GET", max_participants=10)


def test_hangup() -> None:
    assert load("hangup.xml").verbs == (Hangup(),)


def test_reject_reasons_map_to_603_or_486() -> None:
    verbs = load("reject.xml").verbs
    assert [v.sip_status for v in verbs if isinstance(v, Reject)] == [603, 486, 603, 603]
    assert verbs[0] == Reject(RejectReason.REJECTED)
    assert load("reject.xml").warnings == ()  # unknown reasons are 603 without a warning


def test_redirect_and_bare_ampersand() -> None:
    assert load("redirect.xml").verbs == (Redirect("http://example.com/next", "POST"),
                                          Redirect("/relative?a=1&b=2", "GET"))


def test_sms_in_a_voice_document() -> None:
    assert load("sms.xml").verbs == (
        Sms("Thanks for calling"),
        Sms("Details", to="+15550002222", from_="+15550003333", action="/sms-sent",
            method="GET", status_callback="/sms-status"))


# -- bad values: defaults plus warnings ----------------------------------------------------------


def test_bad_attributes_become_defaults_with_warnings() -> None:
    doc = load("bad_attributes.xml")
    say, play, pause, gather, record, dial, sms, redirect = doc.verbs
    assert say == Say("Hi")
    assert play == Play("http://example.com/a.wav", 1)
    assert pause == Pause(1)
    assert gather == Gather()
    assert record == Record(finish_on_key="#")
    assert dial == Dial((Number("+1555", status_callback_event=("initiated",)),))
    assert sms == Sms("body", method="POST")
    assert redirect == Redirect("http://example.com/x", "POST")
    assert 13310 in codes(doc)  # Gather finishOnKey
    assert 14104 in codes(doc)  # Sms method
    # voice, loop, loop, length, method, timeout, numDigits, input, finishOnKey, maxLength,
    # playBeep, media, timeout, record, statusCallbackEvent, Redirect method: 12200 each
    assert codes(doc).count(12200) == 16
    assert all(isinstance(w, Warning) and w.message for w in doc.warnings)


def test_finish_on_key_rules() -> None:
    def gather(value: str) -> tuple[str, list[int]]:
        doc = parse_voice(f'<Response><Gather finishOnKey="{value}"/></Response>'.encode())
        verb = doc.verbs[0]
        assert isinstance(verb, Gather)
        return verb.finish_on_key, codes(doc)

    assert gather("*#0123456789") == ("*#0123456789", [])
    assert gather("1234567890123") == ("#", [13310])  # more than 12
    assert gather("a") == ("#", [13310])
    assert gather("") == ("#", [])  # an empty attribute is an absent one


def test_unknown_and_unsupported_verbs_are_skipped_with_warnings() -> None:
    doc = load("unknown_verbs.xml")
    assert doc.verbs == (Unsupported("Fax"), Unsupported("Email"), Hangup())
    assert codes(doc) == [12200, 12200, 12200]
    assert "say" in doc.warnings[0].message


def test_empty_say_and_play_are_skipped() -> None:
    doc = parse_voice(b"<Response><Say> </Say><Play/><Gather><Say/></Gather></Response>")
    assert doc.verbs == (Gather(),)
    assert codes(doc) == [12200, 12200, 12200]


def test_namespaces_are_ignored() -> None:
    doc = parse_voice(b'<Response xmlns="urn:x"><Say>Hi</Say></Response>')
    assert doc.verbs == (Say("Hi"),)


def test_dial_text_is_ignored_when_it_has_nouns() -> None:
    doc = parse_voice(b"<Response><Dial>+1999<Number>+1555</Number></Dial></Response>")
    assert doc.verbs == (Dial((Number("+1555"),)),)
    assert codes(doc) == [12200]


def test_dial_twilio_record_values() -> None:
    doc = parse_voice(b'<Response><Dial record="record-from-answer">+1555</Dial></Response>')
    assert isinstance(doc.verbs[0], Dial) and doc.verbs[0].record


# -- documents that cannot run ----------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "bad_nesting_gather_dial.xml", "bad_nesting_top_noun.xml", "bad_nesting_say_child.xml",
    "bad_nesting_dial_verb.xml", "dial_empty.xml", "wrong_root.xml", "not_xml.xml",
    "billion_laughs.xml", "external_entity.xml",
])
def test_documents_that_cannot_run(name: str) -> None:
    with pytest.raises(RcmlError) as info:
        load(name)
    assert info.value.code == 12100
    assert info.value.message


@pytest.mark.parametrize("xml", [
    b"<Response><Redirect/></Response>",
    b"<Response><Dial><Number/></Dial></Response>",
    b"<Response><Dial><Conference>a</Conference><Number>1</Number></Dial></Response>",
    b"<Response><Dial>" + b"<Number>1</Number>" * 11 + b"</Dial></Response>",
    b'<Response><Gather hints="' + b"a," * 50 + b'a"/></Response>',
    b'<Response><Gather hints="' + b"a" * 101 + b'"/></Response>',
    b"",
    b"<Response>",
])
def test_invalid_structures(xml: bytes) -> None:
    with pytest.raises(RcmlError) as info:
        parse_voice(xml)
    assert info.value.code == 12100


def test_size_budgets() -> None:
    big = b"<Response><Say>" + b"a" * MAX_DOCUMENT + b"</Say></Response>"
    many = b"<Response>" + b"<Pause/>" * (MAX_VERBS + 1) + b"</Response>"
    deep = (b"<Response>" + b"<Gather>" + b"<Pause/>" * MAX_ELEMENTS + b"</Gather>"
            + b"</Response>")
    for data in (big, many, deep):
        with pytest.raises(RcmlError) as info:
            parse_voice(data)
        assert info.value.code == 12300
    assert len(parse_voice(b"<Response>" + b"<Pause/>" * MAX_VERBS + b"</Response>").verbs) \
        == MAX_VERBS


def test_tag_names_are_case_sensitive() -> None:
    with pytest.raises(RcmlError):
        parse_voice(b"<response><Say>Hi</Say></response>")


# -- parse_response: by Content-Type -----------------------------------------------------------


def test_response_content_types() -> None:
    xml = b"<Response><Hangup/></Response>"
    for kind in ("text/xml", "application/xml; charset=utf-8", "TEXT/HTML"):
        assert parse_response(xml, kind, "http://h/a").verbs == (Hangup(),)
    for kind in ("audio/wav", "audio/wave", "audio/x-wav"):
        assert parse_response(b"RIFF", kind, "http://h/a.wav").verbs == \
            (Play("http://h/a.wav"),)
    assert parse_response(b" Hello \n", "text/plain", "http://h/t").verbs == \
        (Say("Hello"),)
    assert parse_response(b"", "text/plain", "http://h/t").verbs == ()
    with pytest.raises(RcmlError) as info:
        parse_response(b"{}", "application/json", "http://h/j")
    assert info.value.code == 12300


# -- the SMS context (services.messaging) -------------------------------------------------------


def test_sms_reply_keeps_its_list_shape() -> None:
    verbs = parse_document(b"<Response><Sms to='+1' method='get'>Hi</Sms><Say>x</Say>"
                           b"<Redirect>/next</Redirect><Email>x</Email></Response>")
    assert verbs == [Sms("Hi", to="+1", method="GET"), Unsupported("Say"),
                     Redirect("/next", "POST"), Unsupported("Email")]


def test_sms_reply_errors() -> None:
    for data, code in ((b"nope", 12100), (b"<Reply/>", 12100),
                       (b"<Response><Redirect/></Response>", 12100),
                       (b"<Response>" + b"<Sms>x</Sms>" * (MAX_VERBS + 1) + b"</Response>",
                        12300)):
        with pytest.raises(RcmlError) as info:
            parse_document(data)
        assert info.value.code == code
