"""The one error root of smsgw, and the CLI's exit codes."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; `smsgw status` uses the distinct ones for monitoring."""

    OK = 0
    ERROR = 1
    USAGE = 2
    DAEMON_DOWN = 3
    WEBAPP_FAILING = 4
    NOT_FOUND = 5
    WRONG_STATE = 6
    ALREADY_RUNNING = 7


class Error(Exception):
    """Base of every error smsgw raises on purpose."""

    exit_code = ExitCode.ERROR


class InternalError(Error):
    """A bug in smsgw itself (an illegal state move, a broken invariant): never a webapp
    or phone failure. Its traceback goes to the log; the user sees one line."""


class UserError(Error):
    """Something the user can fix; the message says how."""


class StateError(UserError):
    """The state file cannot be read or written; it is kept untouched."""


class WebappError(Error):
    """The webapp could not be reached or answered with an error.

    `status` is the HTTP status when there was an answer, `message` the webapp's own
    words (the JSON `message` field) when it gave some.
    """

    def __init__(self, text: str, status: int | None = None, message: str | None = None):
        super().__init__(text)
        self.status = status
        self.message = message


class PhoneError(Error):
    """A termux-api call failed; `output` holds the tool's own words.

    `maybe_sent` is True when a send may have reached the phone anyway (a timeout or
    unreadable answer), so the message must not be sent again automatically.
    """

    def __init__(self, text: str, output: str = "", maybe_sent: bool = False):
        super().__init__(text)
        self.output = output
        self.maybe_sent = maybe_sent


class PhoneTimeout(PhoneError):
    """A termux-api call did not answer within its timeout and was killed."""

    def __init__(self, text: str, output: str = ""):
        super().__init__(text, output, maybe_sent=True)
