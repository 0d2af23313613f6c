"""Optional HTTPS for the API: a self-signed certificate made on first start, and its context.

The certificate comes from the `openssl` command (present on Raspberry Pi OS and Debian), so the
appliance needs no cryptography library. It is made once and kept: clients that pinned it on
first use keep trusting it across restarts.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from appliance.errors import ApplianceError

logger = logging.getLogger(__name__)

VALID_DAYS = 3650


def ensure_certificate(cert: Path, key: Path, addresses: list[str]) -> bool:
    """Create a self-signed certificate at CERT/KEY unless both exist; True when created."""
    if cert.is_file() and key.is_file():
        return False
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ApplianceError("api.tls is on but the openssl command is missing "
                             "(apt-get install openssl), and no certificate exists")
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    names = [f"DNS:{socket.gethostname()}", "DNS:localhost"]
    names += [f"IP:{a}" for a in addresses]
    old_umask = os.umask(0o077)
    try:
        result = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", str(VALID_DAYS), "-subj", "/CN=appliance",
             "-addext", "subjectAltName=" + ",".join(names),
             "-keyout", str(key), "-out", str(cert)],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.umask(old_umask)
    if result.returncode != 0:
        raise ApplianceError(f"openssl could not make a certificate: {result.stderr.strip()}")
    key.chmod(0o600)
    logger.info("- made a self-signed certificate %s", cert)
    return True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ApplianceError(f"cannot load the TLS certificate {cert}: {err}") from err
    return context
