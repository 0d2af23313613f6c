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
MAX_RESPONSE = 256 * 1024  # an RCML document or SMS reply larger than this is refused
CHUNK = 64 * 1024  # read at most this much at a time: a refused body costs limit + CHUNK
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

    async def request(self, url: str, method: str, params: Mapping[str, str], *,
                      max_size: int | None = None) -> WebhookResponse:
        """POST PARAMS form-encoded, or GET them in the query string; 2xx or WebhookError.

        The whole body is read (to the end of the response); one over MAX_SIZE bytes (default
        `max_response`) is refused as soon as that much has arrived."""
        limit = self._max_response if max_size is None else max_size
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
                    body = await _read_body(resp, limit, f"{method} {url}")
                    result = WebhookResponse(
                        status=resp.status,
                        content_type=resp.headers.get("Content-Type", "").split(";")[0].strip()
                        .lower(),
                        body=body, headers=dict(resp.headers))
        except TimeoutError:
            raise WebhookError(f"{method} {url}: no answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as err:
            raise WebhookError(f"{method} {url}: {type(err).__name__}: {err}") from err
        if not 200 <= result.status < 300:
            raise WebhookError(f"{method} {url}: HTTP {result.status}", result)
        logger.debug("< %s %s: %s, %d bytes", method, url, result.status, len(result.body))
        return result


async def _read_body(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    # content.read(n) returns what has arrived so far, not n bytes: read to EOF, counting.
    if resp.content_length is not None and resp.content_length > limit:
        raise WebhookError(f"{what}: response larger than {limit} bytes "
                           f"(Content-Length {resp.content_length})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise WebhookError(f"{what}: response larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
