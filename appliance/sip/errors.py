"""SIP errors. Each names who is at fault and, for a peer's fault, the status to reply with."""

from __future__ import annotations

from appliance.errors import ApplianceError


class SipError(ApplianceError):
    """Base of every error raised by ``appliance.sip``."""

    status = 500


class SipParseError(SipError):
    """The peer sent something we cannot accept; ``status`` is the SIP reply to send.

    ``status`` follows the sanity table in sip.md §2.3: 400 malformed, 416 unsupported URI
    scheme, 505 bad version, 513 too large. When parsing got far enough, ``method`` and
    ``headers`` hold what was read so that a best-effort reply can still be built
    (see ``message.error_response``).
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        method: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        # (canonical lower-case name, value) pairs in arrival order; empty when the
        # start line or header block itself was unreadable.
        self.headers: list[tuple[str, str]] = headers if headers is not None else []


class FramingError(SipError):
    """A byte stream cannot be split into messages; the transport closes the connection.
    ``status`` is the reply to the request whose head could still be read: 513 when the
    message is too large, 400 otherwise."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SipStateError(SipError):
    """Our own code asked a transaction for a transition its state does not allow."""

    status = 500
