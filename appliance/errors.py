"""The error tree. Each error names who is at fault and the HTTP status to answer with."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""

    status = 500

    def __init__(self, message: str = "", *, json_message: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # Restcomm answers a few errors as {"message": ...} / <Message> instead of plain text.
        self.json_message = json_message


class InvalidInput(ApplianceError):
    status = 400


class Unauthorized(ApplianceError):
    status = 401


class Forbidden(ApplianceError):
    status = 403


class NotFound(ApplianceError):
    status = 404


class MethodNotAllowed(ApplianceError):
    status = 405


class NotAcceptable(ApplianceError):
    status = 406


class Conflict(ApplianceError):
    status = 409


class Duplicate(Conflict):
    """The store refused a row because another row already holds its unique value.

    The store raises it (the database is what makes "check, then insert" atomic); a service
    that checks for duplicates first catches it and answers as its own check does, so that
    two requests racing past that check get the same answer as two made one after the other.
    """

    def __init__(self, table: str, column: str) -> None:
        super().__init__(f"A row with the same {column} already exists in {table}")
        self.table = table
        self.column = column


class Gone(ApplianceError):
    status = 410


class PreconditionFailed(ApplianceError):
    status = 412


class TooLarge(ApplianceError):
    status = 413


class TooManyRequests(ApplianceError):
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ApplianceError):
    status = 503


class StoreBusy(Unavailable):
    """The database could not take a write just now (a full disk, a lock held by another
    process, an I/O error): the same write may well succeed later, unlike one the database
    refuses for what it holds. The store has logged it already (throttled)."""

    retry_after = 30  # seconds; the API's Retry-After

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message


class ConfigError(ApplianceError):
    """The configuration file is unreadable or names an unknown key or a bad value."""
