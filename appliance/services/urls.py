"""The one check for every URL a customer hands us for a webhook (VoiceUrl, SmsUrl,
StatusCallback, RcmlUrl, a call's Url...): an absolute http(s) URL with a host. Checked when
it is given, so that `http://` or `http://[::1` is a 400 then, not an 11200 Notification at
the first call or message that requests it."""

from __future__ import annotations

from yarl import URL

from appliance.errors import InvalidInput

MAX_URL = 2048


def check_http_url(name: str, value: str) -> str:
    """VALUE, or a 400 naming NAME unless it is an absolute http(s) URL with a host."""
    message = f"{name} must be an http:// or https:// URL with a host"
    if len(value) > MAX_URL:
        raise InvalidInput(f"{name} is longer than {MAX_URL} characters")
    if any(c.isspace() for c in value):
        raise InvalidInput(f"{message}: {value!r} contains a space")
    try:
        url = URL(value)
        host = url.host  # decoded only now: "http://xn--a/" raises UnicodeError here
    except ValueError as err:  # UnicodeError included
        raise InvalidInput(f"{message}: {value!r} is not a valid URL ({err})") from None
    if url.scheme.lower() not in ("http", "https") or not host:
        raise InvalidInput(f"{message}: {value!r}")
    return value
