"""The one outbound HTTP client: RCML and SmsUrl requests, status callbacks.

Every request has a total timeout and a response-size budget, and every response is read and
released (Restcomm #2997: sockets left in CLOSE_WAIT). Library types stay here: callers get a
`WebhookResponse` or a `WebhookError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping

import aiohttp
from yarl import URL

from appliance import __version__
from appliance.errors import ApplianceError

logger = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for a whole request; Twilio's webhook timeout is 15 s
MAX_RESPONSE = 256 * 1024  # an RCML document larger than this is refused
MAX_CONNECTIONS = 20


@dataclasses.dataclass(frozen=True)
class WebhookResponse:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


class WebhookError(ApplianceError):
    """The request failed: no connection, a timeout, a non-2xx status or an oversized body."""

    def __init__(self, message: str, response: WebhookResponse | None = None) -> None:
        super().__init__(message)
        self.response = response


class Webhooks:
    def __init__(self, timeout: float = TIMEOUT, max_response: int = MAX_RESPONSE) -> None:
        self._timeout = timeout
        self._max_response = max_response
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                headers={"User-Agent": f"appliance/{__version__}"})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, url: str, method: str, params: Mapping[str, str]
                      ) -> WebhookResponse:
        """POST PARAMS form-encoded, or GET them in the query string; 2xx or WebhookError."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        method = method.upper() if method.upper() in ("GET", "POST") else "POST"
        try:
            target = URL(url)
        except (ValueError, TypeError) as err:
            raise WebhookError(f"bad URL {url!r}: {err}") from err
        if target.scheme not in ("http", "https") or not target.host:
            raise WebhookError(f"bad URL {url!r}: not http(s)")
        try:
            async with asyncio.timeout(self._timeout):
                if method == "GET":
                    ctx = self._session.get(target.update_query(dict(params)),
                                            allow_redirects=True, max_redirects=5)
                else:
                    ctx = self._session.post(target, data=dict(params), allow_redirects=True,
                                             max_redirects=5)
                async with ctx as resp:
                    body = await resp.content.read(self._max_response + 1)
                    result = WebhookResponse(
                        status=resp.status,
                        content_type=resp.headers.get("Content-Type", "").split(";")[0].strip()
                        .lower(),
                        body=body, headers=dict(resp.headers))
        except TimeoutError:
            raise WebhookError(f"{method} {url}: no answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as err:
            raise WebhookError(f"{method} {url}: {type(err).__name__}: {err}") from err
        if len(result.body) > self._max_response:
            raise WebhookError(f"{method} {url}: response larger than {self._max_response} "
                               "bytes", result)
        if not 200 <= result.status < 300:
            raise WebhookError(f"{method} {url}: HTTP {result.status}", result)
        logger.debug("< %s %s: %s, %d bytes", method, url, result.status, len(result.body))
        return result
