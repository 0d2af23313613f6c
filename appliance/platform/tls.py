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
import tempfile
from pathlib import Path

from appliance.errors import ApplianceError, ConfigError

logger = logging.getLogger(__name__)

VALID_DAYS = 3650


def ensure_certificate(cert: Path, key: Path, addresses: list[str]) -> bool:
    """Create a self-signed certificate at CERT/KEY when neither exists; True when created.

    Exactly one of them present is a wrong path in the config (or a lost file), never a
    first start: making a pair then would write over the admin's own certificate or key.
    """
    cert_exists, key_exists = os.path.lexists(cert), os.path.lexists(key)
    if cert_exists and key_exists:
        return False
    if cert_exists or key_exists:
        raise ConfigError(_half_pair(cert, key, cert_exists))
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
        new_key, new_cert = _scratch(key), _scratch(cert)
        try:
            result = subprocess.run(
                [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", str(VALID_DAYS),
                 "-subj", "/CN=appliance", "-addext", "subjectAltName=" + ",".join(names),
                 "-keyout", str(new_key), "-out", str(new_cert)],
                capture_output=True, text=True, timeout=60, check=False)
            if result.returncode != 0:
                raise ApplianceError(
                    f"openssl could not make a certificate: {result.stderr.strip()}")
            new_key.chmod(0o600)
            _place(new_key, key)
            try:
                _place(new_cert, cert)
            except ApplianceError:
                key.unlink()  # ours, linked a moment ago: no half pair left behind
                raise
        finally:
            new_key.unlink(missing_ok=True)
            new_cert.unlink(missing_ok=True)
    finally:
        os.umask(old_umask)
    logger.info("- made a self-signed certificate %s", cert)
    return True


def _half_pair(cert: Path, key: Path, cert_exists: bool) -> str:
    if cert_exists:
        head = (f"api.tls_key: the private key {key} does not exist, "
                f"but the certificate {cert} does")
    else:
        head = (f"api.tls_cert: the certificate {cert} does not exist, "
                f"but the private key {key} does")
    return (f"{head}; correct the path (a self-signed pair is made only when neither file "
            "exists, and no file was written)")


def _scratch(final: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".new")
    os.close(fd)
    return Path(name)


def _place(new: Path, final: Path) -> None:
    # link(), unlike rename(), fails when FINAL exists: a file made meanwhile is never replaced.
    try:
        os.link(new, final)
    except FileExistsError as err:
        raise ApplianceError(f"{final} appeared while the certificate was made; "
                             "nothing was replaced, start again") from err
    except OSError:
        # A file system without hard links (FAT): checked, then renamed.
        if os.path.lexists(final):
            raise ApplianceError(f"{final} appeared while the certificate was made; "
                                 "nothing was replaced, start again") from None
        os.replace(new, final)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ApplianceError(f"cannot load the TLS certificate {cert}: {err}") from err
    return context
