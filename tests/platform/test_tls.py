"""Optional HTTPS: a self-signed certificate made on first start and kept across restarts."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, SipConfig
from tests.conftest import ADMIN_SID, basic, free_port


async def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    port = free_port()
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", port), tls=True),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())))
    app = Appliance(config)
    await app.start()
    try:
        cert = tmp_path / "var" / "tls" / "cert.pem"
        key = tmp_path / "var" / "tls" / "key.pem"
        assert cert.is_file() and oct(key.stat().st_mode)[-3:] == "600"
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the SAN holds the host name and addresses
        password = (tmp_path / "var" / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN_SID}.json"
            async with session.get(url, ssl=context,
                                   headers={"Authorization": basic(ADMIN_SID, password)}) as r:
                assert r.status == 200
            # Plain HTTP on the TLS port is not served.
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as r:
                    assert r.status == 400
            except aiohttp.ClientError:
                pass
        first = cert.read_bytes()
    finally:
        await app.stop()
    app = Appliance(config)
    await app.start()
    try:
        assert cert.read_bytes() == first  # kept, not re-made
    finally:
        await app.stop()
