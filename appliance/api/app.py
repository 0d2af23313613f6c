"""make_app(services) -> web.Application: both URL prefixes, auth, format, errors.

Request pipeline (api-behaviour.md §2): security -> body length -> format -> handler, where
handlers call services that apply the role and permission checks. Every ApplianceError is
rendered here and nowhere else; anything unexpected is logged and answered 500, which the
test suite (schemathesis included) treats as a bug.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from appliance.addresses import unmapped
from appliance.api import (
    accounts,
    applications,
    clients,
    conferences,
    gateways,
    messages,
    numbers,
    outbound,
    records,
    registrations,
    system,
)
from appliance.api.cache import RESPONSE_CACHE, ResponseCache
from appliance.api.context import SERVICES, ApiServices, Ctx
from appliance.api.render import message
from appliance.api.routes import Route, Router
from appliance.errors import (
    ApplianceError,
    Forbidden,
    InvalidInput,
    NotFound,
    StoreBusy,
    TooLarge,
    TooManyRequests,
    Unauthorized,
)
from appliance.models import API_VERSION, AccountStatus

logger = logging.getLogger(__name__)

PREFIXES = ("restcomm", "api")
ROUTES: list[Route] = [*accounts.ROUTES, *clients.ROUTES, *applications.ROUTES,
                       *numbers.ROUTES, *records.ROUTES, *messages.ROUTES,
                       *registrations.ROUTES, *gateways.ROUTES,
                       *outbound.ROUTES, *conferences.ROUTES]
_ROUTER = Router(ROUTES)
_RECORDING_FILE = re.compile(r"^Accounts/[^/]+/Recordings/(RE[0-9a-zA-Z]{32})\.(wav|mp4)$")
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="Restcomm realm"'}
# The bodies aiohttp's post() parses; it answers any other one with no parameters at all.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
NOT_FORM_ENCODED = ("Parameters must be form-encoded (Content-Type: "
                    "application/x-www-form-urlencoded or multipart/form-data)")


def _error_response(err: ApplianceError, as_json: bool) -> web.Response:
    if isinstance(err, Unauthorized):
        return web.Response(status=401, headers=_UNAUTHORIZED_HEADERS)
    if isinstance(err, TooManyRequests | StoreBusy):
        return web.Response(status=err.status, text=err.message, content_type="text/plain",
                            headers={"Retry-After": str(err.retry_after)})
    if err.json_message:
        return web.Response(status=err.status, body=message(err.message, as_json),
                            content_type="application/json" if as_json else "application/xml")
    if not err.message:
        # Still plain text, like every validation error (e.g. a page out of range).
        return web.Response(status=err.status, text="", content_type="text/plain")
    return web.Response(status=err.status, text=err.message, content_type="text/plain")


def _unread_body(request: web.Request) -> bool:
    """Whether REQUEST carries a body its form parameters would silently leave out (a JSON
    document, or a form sent without a Content-Type): a POST or PUT of such a body changed
    nothing and said 200. An empty body leaves nothing out, whatever its type."""
    return (request.method in ("POST", "PUT") and request.body_exists
            and request.content_length != 0 and request.content_type not in _FORM_TYPES)


def _basic_credentials(header: str) -> tuple[str, str]:
    if not header.startswith("Basic "):
        raise Unauthorized()
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized() from None
    user, sep, secret = decoded.partition(":")
    if not sep or not user:
        raise Unauthorized()
    return user, secret


async def _dispatch(request: web.Request, prefix: str, tail: str) -> web.StreamResponse:
    services = request.app[SERVICES]
    segments = tail.split("/")
    as_json = False
    for i, seg in enumerate(segments):
        if seg.endswith(".json"):
            segments[i] = seg[:-5]
            as_json = True
    if segments and segments[-1] == "":
        segments.pop()
    as_xml = False
    if not as_json and segments and segments[-1].endswith(".xml"):
        # The suffix the API docs give for XML (`Calls.xml`): XML whatever Accept says.
        segments[-1] = segments[-1][:-4]
        as_xml = True
    if not as_json and not as_xml and "json" in request.headers.get("Accept", ""):
        as_json = True
    # HEAD is GET without the body (RFC 9110 §9.3.2): aiohttp leaves the body out.
    method = "GET" if request.method == "HEAD" else request.method
    ctx = Ctx(request=request, services=services, as_json=as_json, path={}, prefix=prefix)
    try:
        file_match = _RECORDING_FILE.match(tail)
        if segments == ["Logout"] or file_match:
            # Public resources, GET only: any other method is 405 here, before auth.
            if method != "GET":
                return web.Response(status=405, text="Method not allowed on this resource",
                                    headers={"Allow": "GET, HEAD"})
            if file_match:
                return await system.recording_file(ctx, file_match[1], file_match[2])
            return web.Response(status=200)
        user, secret = _basic_credentials(request.headers.get("Authorization", ""))
        source = _source(request)
        services.logins.check(source)
        try:
            actor = await services.accounts.authenticate(user, secret)
        except Unauthorized:
            services.logins.failed(source, user)
            raise
        services.logins.succeeded(source, user)
        if actor.status not in (AccountStatus.ACTIVE, AccountStatus.UNINITIALIZED):
            raise Forbidden("Provided Account is not active")
        length = request.content_length
        if length is not None and length > services.max_body:
            raise TooLarge(f"Length larger than {services.max_body}")
        found, values, allowed = _ROUTER.match(segments, method)
        if found is None:
            if allowed:
                if "GET" in allowed:
                    allowed = allowed | {"HEAD"}
                return web.Response(status=405, text="Method not allowed on this resource",
                                    headers={"Allow": ", ".join(sorted(allowed))})
            raise NotFound("The requested resource was not found")
        if actor.status == AccountStatus.UNINITIALIZED and not (
                found.pattern == ("Accounts", "{A}") and values["A"] in
                (actor.sid, actor.email_address) and method in ("GET", "POST")):
            raise Forbidden("This account must change its password first: "
                            f"POST a new Password to /Accounts/{actor.sid}")
        if _unread_body(request):
            raise InvalidInput(NOT_FORM_ENCODED)
        ctx.actor = actor
        ctx.path = values
        response = await found.handler(ctx)
        if ctx.cached_at is not None and response.status == 200 and request.method == "GET" \
                and isinstance(response, web.Response) and isinstance(response.body, bytes):
            request.app[RESPONSE_CACHE].remember_answer(
                _answer_key(request), ctx.cached_at, response.body,
                {"Content-Type": response.headers["Content-Type"]})
        return response
    except ApplianceError as err:
        # The store logged StoreBusy already, a line a minute at most: a full disk under
        # load must not cost the journal a line per request.
        if err.status >= 500 and not isinstance(err, StoreBusy):
            # 503 is a part the box lacks or has down (no modem, no media worker): the
            # request is refused for it, nothing failed; anything else 5xx is an error.
            log = logger.warning if err.status == 503 else logger.error
            log("x %s %s: %s", request.method, request.path, err.message)
        return _error_response(err, as_json)


def _answer_key(request: web.Request) -> tuple[str | None, str, str | None]:
    headers = request.headers
    return headers.get("Authorization"), request.raw_path, headers.get("Accept")


def _source(request: web.Request) -> str:
    return unmapped(request.remote or "?")  # an IPv4 client of a [::] listener


async def _api(request: web.Request) -> web.StreamResponse:
    if request.method == "GET" and request.content_length is None:
        answer = request.app[RESPONSE_CACHE].answered(_answer_key(request))
        if answer is not None:
            try:
                # A banned guesser must not learn from a cached 200 that its guess was right.
                request.app[SERVICES].logins.check(_source(request))
            except TooManyRequests as err:
                return _error_response(err, False)
            return web.Response(body=answer[0], headers=answer[1])
    prefix = request.match_info["prefix"]
    # Split the *raw* path, then decode each segment: an encoded "%2F" inside a SID must not
    # become a path separator and reach another resource.
    raw = request.rel_url.raw_path
    marker = f"/{API_VERSION}/"
    raw_tail = raw.split(marker, 1)[1] if marker in raw else ""
    if "%" not in raw_tail:
        return await _dispatch(request, prefix, raw_tail)
    segments = [unquote(seg) for seg in raw_tail.split("/")]
    if any("/" in seg for seg in segments):
        return web.Response(status=404, text="The requested resource was not found",
                            content_type="text/plain")
    return await _dispatch(request, prefix, "/".join(segments))


def _guarded(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Anything unexpected is logged and answered 500 (the tests treat that as a bug).

    A wrapper on each route rather than a middleware: aiohttp's middleware chain costs
    every request several microseconds we do not need to spend."""
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except StoreBusy as err:  # /health reading a database that fails: logged by the store
            return _error_response(err, False)
        except Exception:
            logger.exception("x unhandled error on %s %s", request.method, request.path)
            return web.Response(status=500, text="Internal error; see the appliance log")
    return guarded


def make_app(services: ApiServices, openapi_path: Path | None = None) -> web.Application:
    app = web.Application(client_max_size=services.max_body)
    app[SERVICES] = services
    app[RESPONSE_CACHE] = ResponseCache(services.history.data_version)
    app.router.add_get("/health", _guarded(system.health))
    app.router.add_get("/openapi.yaml", _guarded(system.openapi))
    prefix_re = "|".join(PREFIXES)
    app.router.add_route("*", f"/{{prefix:{prefix_re}}}/{API_VERSION}/{{tail:.*}}",
                         _guarded(_api))
    return app
