"""Calls, SMS, notifications and recordings lists: paging arithmetic and filters (§8.3, §9)."""

from __future__ import annotations

import io
import json
import wave
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from appliance.models import (
    AccountSid,
    CallRecord,
    CallSid,
    Notification,
    NotificationSid,
    Recording,
    RecordingSid,
    SmsRecord,
    SmsSid,
    mint_sid,
)
from tests.conftest import ADMIN_SID, Api, free_port

T0 = datetime(2024, 3, 3, 9, 0, 0, tzinfo=UTC)
CALLS = f"Accounts/{ADMIN_SID}/Calls"


def cdr(i: int, account: str = ADMIN_SID, **kw: object) -> CallRecord:
    values: dict[str, object] = dict(
        sid=CallSid(f"ID{'0' * 32}-CA{i:032x}"), instance_id="ID" + "0" * 32,
        account_sid=AccountSid(account), parent_call_sid=None, to=f"+1555000{i:04d}",
        from_="alice" if i % 2 else "bob", phone_number_sid=None,
        status="completed" if i % 3 else "busy", start_time=T0 + timedelta(minutes=i),
        end_time=T0 + timedelta(minutes=i, seconds=30), duration=30, price=None,
        price_unit="USD", direction="inbound", answered_by=None, api_version="2012-04-24",
        forwarded_from=None, caller_name=None, conference_sid=None, ring_duration=3,
        date_created=T0 + timedelta(minutes=i), date_updated=T0 + timedelta(minutes=i))
    values.update(kw)
    return CallRecord(**values)  # type: ignore[arg-type]


async def seed_calls(appliance: Appliance, n: int) -> None:
    await appliance.store.insert_calls([cdr(i) for i in range(n)])


@pytest.mark.parametrize(("total", "size", "page", "items", "start", "end", "num_pages",
                          "has_next"), [
    (123, 50, 0, 50, 0, 49, 2, True),
    (123, 50, 2, 23, 100, 123, 2, False),
    (100, 50, 1, 50, 50, 99, 2, True),
    (100, 50, 2, 0, 100, 100, 2, False),
    (0, 50, 0, 0, 0, 0, 0, False),
])
async def test_paging_arithmetic(api: Api, appliance: Appliance, total: int, size: int,
                                 page: int, items: int, start: int, end: int, num_pages: int,
                                 has_next: bool) -> None:
    await seed_calls(appliance, total)
    status, body, _ = await api.get(f"{CALLS}.json", params={"Page": str(page),
                                                             "PageSize": str(size)})
    assert status == 200, body
    got = json.loads(body)
    assert list(got)[:11] == ["page", "num_pages", "page_size", "total", "start", "end", "uri",
                              "first_page_uri", "previous_page_uri", "next_page_uri",
                              "last_page_uri"]
    assert got["total"] == total and got["num_pages"] == num_pages
    assert got["start"] == str(start) and got["end"] == str(end)
    assert len(got["calls"]) == items
    assert (got["next_page_uri"] is not None) == has_next
    if has_next:
        last_sid = got["calls"][-1]["sid"]
        assert got["next_page_uri"] == (f"/2012-04-24/{CALLS}?Page={page + 1}&PageSize={size}"
                                        f"&AfterSid={last_sid}")
    assert got["previous_page_uri"] is (None if page == 0 else got["previous_page_uri"])
    assert got["last_page_uri"] == f"/2012-04-24/{CALLS}?Page={num_pages}&PageSize={size}"


async def test_page_out_of_range_and_bad_sizes(api: Api, appliance: Appliance) -> None:
    await seed_calls(appliance, 123)
    status, body, _ = await api.get(f"{CALLS}.json", params={"Page": "3"})
    assert status == 400 and body == ""
    for params in ({"PageSize": "0"}, {"PageSize": "x"}, {"Page": "-1"},
                   {"PageSize": "100000"}):
        status, _, _ = await api.get(f"{CALLS}.json", params=params)
        assert status == 400, params


async def test_xml_calls_list_carries_attributes(api: Api, appliance: Appliance) -> None:
    await seed_calls(appliance, 3)
    status, body, _ = await api.get(CALLS, params={"PageSize": "2"})
    holder = ET.fromstring(body).find("Calls")
    assert holder is not None
    assert holder.get("total") == "3" and holder.get("numpages") == "1"
    assert holder.get("previouspageuri") == "null"
    call = holder.find("Call")
    assert call is not None
    assert [c.tag for c in call][:4] == ["Sid", "InstanceId", "DateCreated", "DateUpdated"]
    assert call.findtext("Ring_duration") == "3"


async def test_call_json_shape_and_default_order(api: Api, appliance: Appliance) -> None:
    await seed_calls(appliance, 5)
    status, body, _ = await api.get(f"{CALLS}.json")
    calls = json.loads(body)["calls"]
    assert [c["to"] for c in calls] == [f"+1555000{i:04d}" for i in (4, 3, 2, 1, 0)]
    one = calls[0]
    assert "price" not in one and one["duration"] == 30 and one["InstanceId"]
    assert one["start_time"] == "2024-03-03T09:04:00.000Z"
    assert one["date_created"] == "Sun, 3 Mar 2024 09:04:00 +0000"
    status, body, _ = await api.get(f"{CALLS}/{one['sid']}.json")
    assert status == 200 and json.loads(body)["sid"] == one["sid"]


async def test_call_filters(api: Api, appliance: Appliance) -> None:
    await seed_calls(appliance, 30)
    await appliance.store.insert_call(cdr(999, parent_call_sid=f"ID{'0' * 32}-CA{1:032x}"))

    async def total(params: dict[str, str]) -> int:
        status, body, _ = await api.get(f"{CALLS}.json", params=params)
        assert status == 200, (params, body)
        return int(json.loads(body)["total"])

    assert await total({}) == 31
    assert await total({"From": "alice"}) == 16
    assert await total({"From": "ali"}) == 0  # a suffix match: '%ali'
    assert await total({"From": "ali%"}) == 16  # the user's own wildcard works
    assert await total({"To": "0007"}) == 1
    assert await total({"Status": "busy"}) == 11
    assert await total({"ParentCallSid": f"ID{'0' * 32}-CA{1:032x}"}) == 1
    assert await total({"StartTime": "2024-03-03"}) == 31
    assert await total({"StartTime": "2024-03-04"}) == 1  # cdr 999 starts 01:39 next day
    assert await total({"StartTime": "2024-03-05"}) == 0
    assert await total({"EndTime": "2024-03-02"}) == 0
    assert await total({"StartTime": "2024-03-03 14:30:07.82"}) == 31  # trailing text ignored
    status, _, _ = await api.get(f"{CALLS}.json", params={"StartTime": "yesterday"})
    assert status == 400


async def test_status_filters_match_like_restcomm_an_unknown_value_lists_nothing(
        api: Api, appliance: Appliance) -> None:
    # api-behaviour.md §8.3/§8.4: Status is matched as `LIKE value`, Restcomm's way, not
    # checked against the enum (D4's 400 is for form data): wildcards work, and a typo
    # lists nothing. docs/api.md says so.
    await seed_calls(appliance, 30)

    async def total(path: str, params: dict[str, str]) -> int:
        status, body, _ = await api.get(path, params=params)
        assert status == 200, (params, body)
        return int(json.loads(body)["total"])

    assert await total(f"{CALLS}.json", {"Status": "complete"}) == 0
    assert await total(f"{CALLS}.json", {"Status": "complete%"}) == 20
    assert await total(f"{CALLS}.json", {"Status": "%s%"}) == 10  # busy
    assert await total(f"Accounts/{ADMIN_SID}/SMS/Messages.json", {"Status": "bogus"}) == 0


async def test_call_end_time_filters_and_inequality_forms(api: Api,
                                                           appliance: Appliance) -> None:
    # 30 calls ended on 2024-03-03, cdr 999 on 2024-03-04, one still going on (no end).
    await seed_calls(appliance, 30)
    await appliance.store.insert_calls([cdr(999), cdr(1000, status="in-progress",
                                                     end_time=None)])

    async def total(query: str) -> int:
        status, body, _ = await api.get(f"{CALLS}.json?{query}")
        assert status == 200, (query, body)
        return int(json.loads(body)["total"])

    assert await total("") == 32
    assert await total("EndTime=2024-03-03") == 30  # ended by the end of that day
    assert await total("EndTime>=2024-03-03") == 31  # ended that day or later
    assert await total("EndTime>=2024-03-04") == 1
    assert await total("EndTime>=2024-03-05") == 0
    assert await total("EndTime<=2024-03-04") == 31  # ended that day or before
    assert await total("EndTime<=2024-03-03") == 30
    assert await total("EndTime<=2024-03-02") == 0
    assert await total("EndTime>=2024-03-03&EndTime<=2024-03-03") == 30
    assert await total("StartTime>=2024-03-04&EndTime<=2024-03-04") == 1
    for query in ("EndTime>=tomorrow", "EndTime<=2024-13-45"):
        status, body, _ = await api.get(f"{CALLS}.json?{query}")
        assert status == 400 and "EndTime" in body, (query, body)
    # The same filters with the whole key encoded, as a client's params dict sends them.
    for key, day, expected in (("EndTime>=", "2024-03-04", 1), ("EndTime<=", "2024-03-03", 30),
                               ("StartTime>=", "2030-01-01", 0)):
        status, body, _ = await api.get(f"{CALLS}.json", params={key: day})
        assert status == 200 and json.loads(body)["total"] == expected, (key, body)
    # The last day there is: every call up to its end (the one still going on has not
    # ended), and no 500.
    for key, expected in (("EndTime", 31), ("EndTime<=", 31), ("StartTime<=", 32)):
        status, body, _ = await api.get(f"{CALLS}.json", params={key: "9999-12-31"})
        assert status == 200 and json.loads(body)["total"] == expected, (key, body)


async def test_sms_date_filters_and_inequality_forms(api: Api, appliance: Appliance) -> None:
    # Created on 3, 4 and 5 March; sent a day after creation, the last one never sent.
    for day in range(3):
        created = T0 + timedelta(days=day)
        await appliance.store.insert_sms(SmsRecord(
            sid=SmsSid(mint_sid("SM")), account_sid=AccountSid(ADMIN_SID), from_="+15550001111",
            to="+15552220000", body=f"day {day}", status="sent" if day < 2 else "queued",
            direction="outbound-api", error_code=None, error_message=None, price="0",
            price_unit="USD", api_version="2012-04-24",
            date_sent=created + timedelta(days=1) if day < 2 else None,
            date_created=created, date_updated=created))

    async def bodies(query: str) -> list[str]:
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json?{query}")
        assert status == 200, (query, body)
        return sorted(m["body"] for m in json.loads(body)["messages"])

    assert await bodies("StartTime=2024-03-04") == ["day 1", "day 2"]
    assert await bodies("StartTime>=2024-03-04") == ["day 1", "day 2"]
    assert await bodies("StartTime<=2024-03-04") == ["day 0", "day 1"]
    assert await bodies("EndTime=2024-03-04") == ["day 0", "day 1"]
    assert await bodies("EndTime<=2024-03-03") == ["day 0"]
    assert await bodies("EndTime>=2024-03-05") == ["day 2"]
    assert await bodies("StartTime>=2024-03-04&StartTime<=2024-03-04") == ["day 1"]
    assert await bodies("DateSent=2024-03-05") == ["day 1"]  # that day only
    assert await bodies("DateSent>=2024-03-04") == ["day 0", "day 1"]  # never sent: left out
    assert await bodies("DateSent<=2024-03-04") == ["day 0"]
    assert await bodies("DateSent<=2024-03-02") == []
    assert await bodies("DateSent=9999-12-31") == []
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json",
                                    params={"DateSent>=": "2024-03-05"})
    assert status == 200 and [m["body"] for m in json.loads(body)["messages"]] == ["day 1"]
    for query in ("StartTime>=soon", "StartTime<=x", "EndTime<=x", "DateSent=x",
                  "DateSent>=x", "DateSent<=2024-02-30"):
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json?{query}")
        assert status == 400, (query, body)


async def test_notification_date_filters_and_inequality_forms(api: Api,
                                                                appliance: Appliance) -> None:
    # One notification on each of 3, 4 and 5 March.
    for day in range(3):
        logged = T0 + timedelta(days=day)
        await appliance.store.insert_notification(Notification(
            sid=NotificationSid(mint_sid("NO")), account_sid=AccountSid(ADMIN_SID),
            call_sid=None, log=0, error_code=11200, more_info="", message_text=f"day {day}",
            message_date=logged, request_url="", request_method="", request_variables="",
            response_headers="", response_body="", date_created=logged, date_updated=logged))
    path = f"Accounts/{ADMIN_SID}/Notifications.json"

    async def texts(query: str) -> list[str]:
        status, body, _ = await api.get(f"{path}?{query}")
        assert status == 200, (query, body)
        return sorted(n["message_text"] for n in json.loads(body)["notifications"])

    assert await texts("") == ["day 0", "day 1", "day 2"]
    # Twilio's MessageDate: that day only; >= and <= from the start / to the end of the day.
    assert await texts("MessageDate=2024-03-04") == ["day 1"]
    assert await texts("MessageDate>=2024-03-04") == ["day 1", "day 2"]
    assert await texts("MessageDate<=2024-03-04") == ["day 0", "day 1"]
    assert await texts("MessageDate>=2024-03-04&MessageDate<=2024-03-04") == ["day 1"]
    assert await texts("MessageDate>=2024-03-06") == []
    assert await texts("MessageDate=9999-12-31") == []
    assert await texts("MessageDate<=9999-12-31") == ["day 0", "day 1", "day 2"]
    # Restcomm's StartTime/EndTime bound the creation time, and so do their >= and <= forms.
    assert await texts("StartTime=2024-03-04") == ["day 1", "day 2"]
    assert await texts("StartTime>=2024-03-05") == ["day 2"]
    assert await texts("StartTime<=2024-03-03") == ["day 0"]
    assert await texts("EndTime>=2024-03-04") == ["day 1", "day 2"]
    assert await texts("EndTime<=2024-03-04") == ["day 0", "day 1"]
    # The whole key encoded, as a client's params dict sends it.
    for key, expected in (("MessageDate>=", ["day 2"]), ("MessageDate<=", ["day 0"]),
                          ("StartTime<=", ["day 0"]), ("EndTime>=", ["day 2"])):
        day = "2024-03-05" if key.endswith(">=") else "2024-03-03"
        status, body, _ = await api.get(path, params={key: day})
        assert status == 200, (key, body)
        assert sorted(n["message_text"] for n in json.loads(body)["notifications"]) == expected
    for query, name in (("MessageDate=today", "MessageDate"), ("MessageDate>=x", "MessageDate>="),
                        ("MessageDate<=2024-02-30", "MessageDate<="),
                        ("StartTime>=soon", "StartTime>="), ("EndTime<=x", "EndTime<=")):
        status, body, _ = await api.get(f"{path}?{query}")
        assert status == 400 and f"{name} must be a date" in body, (query, body)


async def test_recording_date_filters_and_inequality_forms(api: Api,
                                                             appliance: Appliance) -> None:
    # One recording on each of 3, 4 and 5 March, told apart by their durations.
    for day in range(3):
        created = T0 + timedelta(days=day)
        await appliance.store.insert_recording(Recording(
            sid=RecordingSid(mint_sid("RE")), account_sid=AccountSid(ADMIN_SID), call_sid=None,
            duration=float(day), file_path=str(api.data_dir / f"r{day}.wav"),
            date_created=created, date_updated=created))
    path = f"Accounts/{ADMIN_SID}/Recordings.json"

    async def days(query: str) -> list[str]:
        status, body, _ = await api.get(f"{path}?{query}")
        assert status == 200, (query, body)
        return sorted(r["duration"] for r in json.loads(body)["recordings"])

    assert await days("") == ["0.0", "1.0", "2.0"]
    # Twilio's DateCreated: that day only; >= and <= from the start / to the end of the day.
    assert await days("DateCreated=2024-03-04") == ["1.0"]
    assert await days("DateCreated>=2024-03-04") == ["1.0", "2.0"]
    assert await days("DateCreated<=2024-03-04") == ["0.0", "1.0"]
    assert await days("DateCreated>=2024-03-04&DateCreated<=2024-03-04") == ["1.0"]
    assert await days("DateCreated<=2024-03-02") == []
    assert await days("DateCreated=9999-12-31") == []
    # Restcomm's StartTime/EndTime bound the creation time, and so do their >= and <= forms.
    assert await days("StartTime=2024-03-04") == ["1.0", "2.0"]
    assert await days("StartTime>=2024-03-05") == ["2.0"]
    assert await days("StartTime<=2024-03-03") == ["0.0"]
    assert await days("EndTime>=2024-03-04") == ["1.0", "2.0"]
    assert await days("EndTime<=2024-03-04") == ["0.0", "1.0"]
    for key, expected in (("DateCreated>=", ["2.0"]), ("DateCreated<=", ["0.0"]),
                          ("StartTime>=", ["2.0"]), ("EndTime<=", ["0.0"])):
        day = "2024-03-05" if key.endswith(">=") else "2024-03-03"
        status, body, _ = await api.get(path, params={key: day})
        assert status == 200, (key, body)
        assert sorted(r["duration"] for r in json.loads(body)["recordings"]) == expected
    for query, name in (("DateCreated=today", "DateCreated"), ("DateCreated>=x", "DateCreated>="),
                        ("DateCreated<=2024-13-01", "DateCreated<="),
                        ("StartTime<=soon", "StartTime<="), ("EndTime>=x", "EndTime>=")):
        status, body, _ = await api.get(f"{path}?{query}")
        assert status == 400 and f"{name} must be a date" in body, (query, body)


async def test_call_sorting(api: Api, appliance: Appliance) -> None:
    await appliance.store.insert_calls([cdr(i, duration=(i * 7) % 5) for i in range(5)])
    status, body, _ = await api.get(f"{CALLS}.json", params={"SortBy": "Duration:asc"})
    durations = [c["duration"] for c in json.loads(body)["calls"]]
    assert durations == sorted(durations)
    status, body, _ = await api.get(f"{CALLS}.json", params={"Reverse": "false"})
    assert [c["to"] for c in json.loads(body)["calls"]][0] == "+15550000000"
    status, body, _ = await api.get(f"{CALLS}.json", params={"SortBy": ":asc"})
    assert status == 400 and "Error parsing the SortBy parameter" in body
    status, body, _ = await api.get(f"{CALLS}.json", params={"SortBy": "Duration:sideways"})
    assert status == 400
    status, _, _ = await api.get(f"{CALLS}.json", params={"SortBy": "Nonsense"})
    assert status == 200


async def test_sub_accounts_filter_and_isolation(api: Api, appliance: Appliance) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                        "Password": "Pbx-edge-7"})
    sub = json.loads(body)["sid"]
    await appliance.store.insert_calls([cdr(1), cdr(2, account=sub)])
    status, body, _ = await api.get(f"{CALLS}.json")
    assert json.loads(body)["total"] == 1
    status, body, _ = await api.get(f"{CALLS}.json", params={"SubAccounts": "true"})
    assert json.loads(body)["total"] == 2
    child = api.as_user("sub@example.com", "Pbx-edge-7")
    status, body, _ = await child.get(f"Accounts/{sub}/Calls.json")
    assert json.loads(body)["total"] == 1
    status, _, _ = await child.get(f"Accounts/{sub}/Calls/{cdr(1).sid}")
    assert status == 403


async def test_sms_list_and_shape(api: Api, appliance: Appliance) -> None:
    for i in range(3):
        await appliance.store.insert_sms(SmsRecord(
            sid=SmsSid(mint_sid("SM")), account_sid=AccountSid(ADMIN_SID), from_="+15550001111",
            to=f"+1555222000{i}", body=f"hello {i}", status="sent" if i else "failed",
            direction="outbound-api", error_code=None if i else 30008,
            error_message=None if i else "Unknown error", price="0", price_unit="USD",
            api_version="2012-04-24", date_sent=T0, date_created=T0 + timedelta(seconds=i),
            date_updated=T0))
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
    got = json.loads(body)
    assert got["total"] == 3 and len(got["messages"]) == 3
    assert got["uri"] == f"/restcomm/2012-04-24/Accounts/{ADMIN_SID}/SMS/Messages.json"
    msg = got["messages"][0]
    assert list(msg)[:10] == ["sid", "date_created", "date_updated", "date_sent",
                              "account_sid", "from", "to", "body", "status", "direction"]
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json",
                                    params={"Body": "llo 1"})
    assert json.loads(body)["total"] == 1
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages",
                                    prefix="/api")
    root = ET.fromstring(body)
    holder = root.find("SMSMessages")
    assert holder is not None and holder.attrib == {}
    failed = [m for m in holder if m.findtext("Status") == "failed"][0]
    assert failed.findtext("Error/ErrorCode") == "30008"
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages/{msg['sid']}.json")
    assert json.loads(body)["sid"] == msg["sid"]


async def test_control_characters_in_an_sms_body_keep_the_xml_well_formed(
        api: Api, appliance: Appliance) -> None:
    # A body from a phone's MESSAGE or a POST may hold any character; XML 1.0 cannot carry
    # C0 controls (but tab, LF, CR), U+FFFE or U+FFFF: "?" instead (docs/api.md).
    text = "a\x01b\x0bc\x1bd\ufffee\tf\n"
    await appliance.store.insert_sms(SmsRecord(
        sid=SmsSid(mint_sid("SM")), account_sid=AccountSid(ADMIN_SID), from_="alice",
        to="+15552220000", body=text, status="sent", direction="outbound-api",
        error_code=None, error_message=None, price="0", price_unit="USD",
        api_version="2012-04-24", date_sent=T0, date_created=T0, date_updated=T0))
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages")
    assert status == 200
    item = ET.fromstring(body).find("SMSMessages/SMSMessage")  # parses
    assert item is not None and item.findtext("Body") == "a?b?c?d?e\tf\n"
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages/{item.findtext('Sid')}")
    assert status == 200 and ET.fromstring(body).findtext("SMSMessage/Body") == "a?b?c?d?e\tf\n"
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
    assert [m["body"] for m in json.loads(body)["messages"]] == [text]


async def test_placing_calls_without_media_workers_is_503(api: Api) -> None:
    # The shared fixture runs with [media] workers = 0 (tests/voice has real workers).
    # A To that reaches nobody is answered as such first: the 503 is for a placeable call.
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "+15550001111", "To": "client:alice",
                                                       "Url": "http://127.0.0.1:9/x"})
    assert status == 404 and "alice was not found" in body
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "+15550001111", "To": "+15550100",
                                                       "Url": "http://127.0.0.1:9/x"})
    assert status == 403 and "No outbound route" in body
    status, _, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                  {"Login": "alice", "Password": "Secret-pass-1"})
    assert status == 200
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "+15550001111", "To": "client:alice",
                                                       "Url": "http://127.0.0.1:9/x"})
    assert status == 503 and "media workers" in body
    status, body, _ = await api.post(f"{CALLS}.json", {"To": "client:alice"})
    assert status == 400 and "From can not be null." in body
    # From: a phone number or a Client of the account, checked before anything is placed
    for good in ("+1 555 000-1111", "15550001111", "alice", "client:alice"):
        status, body, _ = await api.post(f"{CALLS}.json", {
            "From": good, "To": "client:alice", "Url": "http://127.0.0.1:9/x"})
        assert status == 503 and "media workers" in body, (good, body)
    for bad in ("abc", "client:", "client:nobody", "+1", "+1555000111x"):
        status, body, _ = await api.post(f"{CALLS}.json", {
            "From": bad, "To": "client:alice", "Url": "http://127.0.0.1:9/x"})
        assert status == 400, (bad, body)
        assert f"From {bad} is neither a phone number nor a Client" in body, body
    # curl -d "From=+16175551212": the unencoded '+' arrives as a space
    status, body, _ = await api.post(f"{CALLS}.json", {
        "From": " 16175551212", "To": "client:alice", "Url": "http://127.0.0.1:9/x"})
    assert status == 400 and "send it as %2B" in body, body
    status, body, _ = await api.post(f"{CALLS}.json", {
        "From": "alice", "To": " 16175551212", "Url": "http://127.0.0.1:9/x"})
    assert status == 400 and "To ' 16175551212' starts or ends with a space" in body, body
    status, body, _ = await api.get(f"{CALLS}.json")
    assert json.loads(body)["calls"] == []  # nothing was placed
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "+15550001111", "To": "client:alice",
                                                       "Url": "http://127.0.0.1:9/x",
                                                       "Timeout": "soon"})
    assert status == 400 and "Timeout" in body


async def test_notifications_written_by_the_appliance(api: Api, appliance: Appliance) -> None:
    note = await appliance.history.notify(ADMIN_SID, 11200, "HTTP retrieval failure",
                                          request_url="http://127.0.0.1:9/app.xml",
                                          request_method="POST")
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    got = json.loads(body)
    assert got["total"] == 1
    item = got["notifications"][0]
    assert item["error_code"] == 11200 and item["log"] == 0
    assert item["request_url"] == "http://127.0.0.1:9/app.xml"
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json",
                                    params={"ErrorCode": "11200", "MessageText": "retrieval"})
    assert json.loads(body)["total"] == 1
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications/{note.sid}")
    assert "<MessageText>HTTP retrieval failure</MessageText>" in body


async def test_recordings_metadata_needs_auth_file_does_not(api: Api,
                                                            appliance: Appliance) -> None:
    path = api.data_dir / "recordings" / "r.wav"
    path.parent.mkdir(parents=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 8000)
    sid = RecordingSid(mint_sid("RE"))
    await appliance.store.insert_recording(Recording(
        sid=sid, account_sid=AccountSid(ADMIN_SID), call_sid=None, duration=1.0,
        file_path=str(path), date_created=T0, date_updated=T0))
    base = f"Accounts/{ADMIN_SID}/Recordings"
    status, body, _ = await api.get(f"{base}/{sid}.json")
    rec = json.loads(body)
    assert rec["duration"] == "1.0" and rec["file_uri"].endswith(f"/Recordings/{sid}.wav")
    status, _, _ = await api.get(f"{base}/{sid}.json", auth=False)
    assert status == 401
    async with api.session.get(api.url(f"{base}/{sid}.wav")) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/x-wav"
        assert (await resp.read())[:4] == b"RIFF"
    # A link checker's (or wget --spider's) HEAD: the GET's headers, no body.
    async with api.session.head(api.url(f"{base}/{sid}.wav")) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/x-wav"
        assert resp.headers["Content-Length"] == str(path.stat().st_size)
        assert await resp.read() == b""
    status, _, _ = await api.get(f"{base}/RE{'0' * 32}.wav", auth=False)
    assert status == 404
    status, body, _ = await api.get(f"{base}.json")
    assert json.loads(body)["total"] == 1
    status, _, _ = await api.request("DELETE", f"{base}/{sid}")
    assert status == 200 and not path.exists()


async def test_a_recording_cut_short_by_a_power_cut_is_kept_at_the_next_start(
        tmp_path: Path) -> None:
    # A <Record> running when the power went: the worker never closed the file (its header
    # says 0 frames) and it was never renamed to a RecordingSid nor listed. At the next
    # start it becomes a Recording of its call, playable; a file of no known call goes.
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())),
                    media=MediaConfig(workers=0))
    first = Appliance(config)
    await first.start()
    call = cdr(7)
    await first.store.insert_call(call)
    await first.stop()
    recordings = config.data_dir / "recordings"
    recordings.mkdir(exist_ok=True)
    cut = recordings / f"{call.sid}-1764550000000000000.wav"
    with wave.open(str(cut), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x10\x00" * 8000 * 3)  # 3 s
    raw = bytearray(cut.read_bytes())
    raw[4:8] = raw[40:44] = b"\x00\x00\x00\x00"  # sizes never written
    cut.write_bytes(bytes(raw))
    stray = recordings / f"ID{'0' * 32}-CA{'f' * 32}-1764550000000000001.wav"
    stray.write_bytes(bytes(raw))
    again = Appliance(config)
    await again.start()
    try:
        password = (config.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, config.data_dir)
            status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls/{call.sid}"
                                            "/Recordings.json")
            assert status == 200, body
            [rec] = json.loads(body)
            assert rec["duration"] == "3.0"
            async with session.get(api.url(f"Accounts/{ADMIN_SID}/Recordings/"
                                           f"{rec['sid']}.wav")) as resp:
                assert resp.status == 200
                data = await resp.read()
            with wave.open(io.BytesIO(data), "rb") as w:
                assert w.getnframes() == 8000 * 3
        assert not cut.exists() and not stray.exists()
    finally:
        await again.stop()
