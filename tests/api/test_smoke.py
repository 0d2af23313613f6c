from __future__ import annotations

import json

from tests.conftest import ADMIN_SID, Api


async def test_admin_reads_own_account_as_json(api: Api) -> None:
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}.json")
    assert status == 200
    assert json.loads(body)["sid"] == ADMIN_SID
