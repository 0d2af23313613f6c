"""Optional HTTPS: a self-signed certificate made on first start and kept across restarts;
the admin's own pair served and never written over."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, SipConfig
from appliance.errors import ConfigError
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


def _own_pair(directory: Path) -> tuple[Path, Path]:
    """The admin's own certificate and key, as a CA or `openssl req` would have made them."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "office.crt", directory / "office.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
                    "-subj", "/CN=pbx.office.example", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True, timeout=60)
    return cert, key


@pytest.mark.parametrize("typo", ["tls_key", "tls_cert"])
async def test_a_wrong_path_to_one_file_of_the_pair_never_overwrites_the_other(
        tmp_path: Path, typo: str) -> None:
    # A typo in one path used to make a new self-signed pair over the other, real, file:
    # the admin's certificate (or private key) was silently lost.
    cert, key = _own_pair(tmp_path / "own")
    before = cert.read_bytes(), key.read_bytes()
    wrong = tmp_path / "own" / ("office.ky" if typo == "tls_key" else "office.crtt")
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port()), tls=True,
                                  tls_cert=str(wrong if typo == "tls_cert" else cert),
                                  tls_key=str(wrong if typo == "tls_key" else key)),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())))
    app = Appliance(config)
    try:
        with pytest.raises(ConfigError) as raised:
            await app.start()
    finally:
        await app.stop()
    assert f"api.{typo}" in raised.value.message and str(wrong) in raised.value.message
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not wrong.exists()
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["office.crt", "office.key"]


async def test_the_admins_own_pair_is_served_as_it_is(tmp_path: Path) -> None:
    cert, key = _own_pair(tmp_path / "own")
    before = cert.read_bytes(), key.read_bytes()
    port = free_port()
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", port), tls=True,
                                  tls_cert=str(cert), tls_key=str(key)),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())))
    app = Appliance(config)
    await app.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/health", ssl=context) as r:
                assert r.status == 200
    finally:
        await app.stop()
    assert (cert.read_bytes(), key.read_bytes()) == before
