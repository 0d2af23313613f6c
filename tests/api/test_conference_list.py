"""The Conferences list's date filters over HTTP (§8.8): Restcomm's DateCreated/DateUpdated
and their >= / <= forms."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from appliance.app import Appliance
from appliance.models import (
    API_VERSION,
    AccountSid,
    Conference,
    ConferenceSid,
    ConferenceStatus,
    mint_sid,
)
from appliance.store.conferences import ConferenceStore
from tests.conftest import ADMIN_SID, Api

T0 = datetime(2024, 3, 3, 9, 0, 0, tzinfo=UTC)
PATH = f"Accounts/{ADMIN_SID}/Conferences"


async def seed(appliance: Appliance) -> None:
    """`room 0`, `room 1`, `room 2` created on 3, 4 and 5 March at 09:00, each last updated
    late the next day (23:00 on 4, 5 and 6 March)."""
    store = ConferenceStore(appliance.store)
    for day in range(3):
        created = T0 + timedelta(days=day)
        await store.insert(Conference(
            sid=ConferenceSid(mint_sid("CF")), account_sid=AccountSid(ADMIN_SID),
            friendly_name=f"room {day}", status=ConferenceStatus.COMPLETED,
            api_version=API_VERSION, date_created=created,
            date_updated=created + timedelta(days=1, hours=14)))


async def test_conference_date_filters_and_inequality_forms(api: Api,
                                                             appliance: Appliance) -> None:
    await seed(appliance)

    async def rooms(query: str) -> list[str]:
        status, body, _ = await api.get(f"{PATH}.json?{query}")
        assert status == 200, (query, body)
        return sorted(c["friendly_name"] for c in json.loads(body)["conferences"])

    everything = ["room 0", "room 1", "room 2"]
    assert await rooms("") == everything
    # Restcomm's DateCreated= and DateUpdated=: that day or later (unchanged).
    assert await rooms("DateCreated=2024-03-04") == ["room 1", "room 2"]
    assert await rooms("DateUpdated=2024-03-06") == ["room 2"]
    # >= from the start of the day, <= to the end of it (23:00 is still that day).
    assert await rooms("DateCreated>=2024-03-04") == ["room 1", "room 2"]
    assert await rooms("DateCreated<=2024-03-04") == ["room 0", "room 1"]
    assert await rooms("DateCreated>=2024-03-04&DateCreated<=2024-03-04") == ["room 1"]
    assert await rooms("DateCreated<=2024-03-02") == []
    assert await rooms("DateCreated>=2024-03-06") == []
    assert await rooms("DateCreated<=9999-12-31") == everything
    assert await rooms("DateUpdated>=2024-03-05") == ["room 1", "room 2"]
    assert await rooms("DateUpdated<=2024-03-05") == ["room 0", "room 1"]
    assert await rooms("DateUpdated<=2024-03-03") == []
    assert await rooms("DateUpdated>=2024-03-05&DateUpdated<=2024-03-05") == ["room 1"]
    # Each bounds its own column, and they combine.
    assert await rooms("DateCreated<=2024-03-04&DateUpdated>=2024-03-05") == ["room 1"]
    assert await rooms("DateCreated=2024-03-04&DateUpdated<=2024-03-05") == ["room 1"]


async def test_conference_date_filters_with_the_key_encoded(api: Api,
                                                            appliance: Appliance) -> None:
    # A client's params dict sends `DateCreated%3E%3D=...`: the key `DateCreated>=`.
    await seed(appliance)
    for key, day, expected in (("DateCreated>=", "2024-03-05", ["room 2"]),
                               ("DateCreated<=", "2024-03-03", ["room 0"]),
                               ("DateUpdated>=", "2024-03-06", ["room 2"]),
                               ("DateUpdated<=", "2024-03-04", ["room 0"])):
        status, body, _ = await api.get(f"{PATH}.json", params={key: day})
        assert status == 200, (key, body)
        assert sorted(c["friendly_name"] for c in json.loads(body)["conferences"]) == expected
    # The XML list too, with its paging attributes counting what the filter kept.
    status, body, _ = await api.get(PATH, params={"DateUpdated<=": "2024-03-05"})
    assert status == 200, body
    listed = ET.fromstring(body).find("Conferences")
    assert listed is not None and listed.get("total") == "2", body
    assert sorted(c.findtext("FriendlyName") or "" for c in listed) == ["room 0", "room 1"]


async def test_conference_date_filters_reject_what_is_not_a_date(api: Api,
                                                                 appliance: Appliance) -> None:
    await seed(appliance)
    for query, name in (("DateCreated=today", "DateCreated"),
                        ("DateCreated>=x", "DateCreated>="),
                        ("DateCreated<=2024-02-30", "DateCreated<="),
                        ("DateUpdated>=soon", "DateUpdated>="),
                        ("DateUpdated<=2024-13-01", "DateUpdated<=")):
        status, body, _ = await api.get(f"{PATH}.json?{query}")
        assert status == 400 and f"{name} must be a date" in body, (query, body)
    status, body, _ = await api.get(f"{PATH}.json", params={"DateUpdated<=": "yesterday"})
    assert status == 400 and "DateUpdated<= must be a date" in body, body
