"""RCML verbs as frozen data. Only the messaging verbs exist so far; voice verbs come with
the media workers."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Sms:
    text: str
    to: str | None = None
    from_: str | None = None
    action: str | None = None
    method: str = "POST"
    status_callback: str | None = None


@dataclasses.dataclass(frozen=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclasses.dataclass(frozen=True)
class Unsupported:
    """A verb this context does not run (e.g. <Say> in an SMS reply); reported, then skipped."""

    name: str


Verb = Sms | Redirect | Unsupported
