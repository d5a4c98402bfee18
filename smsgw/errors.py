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


# What the user can do about an OS error, by errno (the others are bugs of ours).
_OS_ADVICE = {
    "EROFS": "set SMSGW_HOME to a writable folder",
    "EACCES": "check its owner and permissions (ls -ld), or set SMSGW_HOME to a folder of "
              "your own",
    "EPERM": "check its owner and permissions (ls -ld), or set SMSGW_HOME to a folder of "
             "your own",
    "ENOSPC": "free some space on that disk",
    "EDQUOT": "free some space (disk quota reached)",
    "ENOENT": "check that the folder exists, or set SMSGW_HOME to one that does",
    "ENOTDIR": "a part of that path is a file, not a folder: set SMSGW_HOME to a folder",
    "EISDIR": "it is a folder: move it away",
    "ELOOP": "it is a symbolic link: remove it",
    "EMFILE": "too many open files: close other programs, or raise `ulimit -n`",
    "ENFILE": "too many open files: close other programs",
}


def os_advice(exc: OSError) -> str | None:
    """What the user can do about an OS error, or None when it is not theirs to fix."""
    import errno

    return _OS_ADVICE.get(errno.errorcode.get(exc.errno or 0, ""))


def os_error_text(exc: OSError, doing: str | None = None) -> str | None:
    """An OS error the user can fix, in words, naming the path and what to do (`doing`:
    e.g. "create the folder"); None for the others (a bug of ours)."""
    import errno
    import os

    advice = os_advice(exc)
    if advice is None:
        return None
    why = (exc.strerror or os.strerror(exc.errno or 0)).lower()
    path = exc.filename
    if path is None:
        return f"{why}; {advice}"
    shown = str(os.fspath(path))
    base = os.path.basename(shown)
    if base.startswith(".") and base.endswith(".tmp"):  # a temp file: name its folder
        shown = os.path.dirname(shown)
    home = os.path.expanduser("~")
    if home not in ("", "/") and shown.startswith(home + os.sep):
        shown = "~" + shown[len(home):]
    if doing is None:
        writing = exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
        doing = "write" if writing else "use"
    return f"cannot {doing} {shown}: {why}; {advice}"
