"""What the `smsgw simulate` commands do: drive the simulated phone of
`smsgw run --phone simulated` (its SMS provider, a file in the state folder) from another
process, as the world drives a real phone: an SMS arrives, sends fail, the radio goes off.
"""

from __future__ import annotations

import json
from pathlib import Path

from .actions import Outcome, fmt_time
from .config import Paths
from .errors import UserError
from .models import printable
from .phone.base import InvalidNumber, normalize_number
from .phone.simulated import FILE_NAME, SimulatedPhone


def phone_file(state_dir: Path) -> Path:
    """Where the simulated phone of a state folder keeps its SMS provider."""
    return state_dir / FILE_NAME


def open_phone(paths: Paths) -> SimulatedPhone:
    """The simulated phone of `paths` (created empty the first time)."""
    paths.ensure()
    return SimulatedPhone(file=phone_file(paths.state_dir))


def receive(paths: Paths, sender: str, text: str) -> Outcome:
    """`smsgw simulate receive`: an SMS from `sender` arrives on the simulated phone; a
    running daemon is woken so it forwards it at once."""
    from .daemon import daemon_running, wake

    try:
        number = normalize_number(sender)
    except InvalidNumber as exc:
        raise UserError(f"{exc}: give the sender as digits with an optional + "
                        "(e.g. +15550001111)") from None
    open_phone(paths).receive(number, text)
    out = [f"the simulated phone received an SMS from {number}"]
    phone = (daemon_running(paths) or {}).get("phone")
    if phone not in (None, "simulated"):
        out.append(f"the running smsgw uses the {phone} phone, not this one: the SMS waits "
                   "for `smsgw run --phone simulated`")
        return Outcome(out=out)
    pid = wake(paths)
    if pid is None:
        out.append("no daemon is running: `smsgw run --phone simulated` forwards it")
    else:
        out.append(f"woke smsgw (pid {pid}) to forward it")
    return Outcome(out=out)


def fail_next(paths: Paths, count: int) -> Outcome:
    """`smsgw simulate fail-next N`: the next N sends end as failed rows."""
    open_phone(paths).fail_next_sends(count)
    if count == 0:
        return Outcome(out=["sends on the simulated phone no longer fail "
                            "(unless the radio is off)"])
    sends = "send" if count == 1 else f"{count} sends"
    return Outcome(out=[f"the next {sends} on the simulated phone will fail (a failed row, "
                        "as Android records a send without service)"])


def radio(paths: Paths, on: bool) -> Outcome:
    """`smsgw simulate radio on|off`: while off, every send ends as a failed row."""
    open_phone(paths).radio_off = not on
    if on:
        return Outcome(out=["the simulated phone's radio is on: sends go out"])
    return Outcome(out=["the simulated phone's radio is off: every send fails (a failed "
                        "row) until `smsgw simulate radio on`"])


def show(paths: Paths, limit: int, as_json: bool) -> Outcome:
    """`smsgw simulate show`: the simulated phone's rows, newest last."""
    file = phone_file(paths.state_dir)
    view = None
    if file.exists():
        paths.ensure()  # refuses a state folder of another user or open to others
        view = SimulatedPhone(file=file).view()
    rows = view.rows if view else []
    shown = rows[-limit:] if limit else []
    if as_json:
        return Outcome(out=[json.dumps({
            "file": str(file), "radio": "off" if view and view.radio_off else "on",
            "fail_next": view.fail_next if view else 0, "rows": len(rows),
            "shown": [{"_id": r.row_id, "type": r.kind, "address": r.address, "body": r.body,
                       "date": r.date.isoformat(),
                       **({"unreadable": {"raw": bad.raw, "reason": bad.reason}}
                          if bad else {})} for r, bad in shown],
        }, indent=2)])
    radio_text = "off (every send fails)" if view and view.radio_off else "on"
    fail_text = f", the next {view.fail_next} sends fail" if view and view.fail_next else ""
    out = [f"Simulated phone ({file}): radio {radio_text}{fail_text}"]
    if not rows:
        out.append("  no SMS yet (`smsgw simulate receive FROM TEXT`, or a send by "
                    "`smsgw run --phone simulated`)")
    if len(rows) > len(shown):
        out.append(f"  ... {len(rows) - len(shown)} older rows (--limit)")
    for row, bad in shown:
        when = fmt_time(row.date)
        if bad is not None:
            out.append(f"  #{row.row_id}  {when}  unreadable inbox row ({printable(bad.reason)})"
                       f"  {printable(bad.raw)}")
            continue
        who = f"from {row.address}" if row.kind == "inbox" else f"to {row.address}"
        out.append(f"  #{row.row_id}  {when}  {row.kind:<7} {printable(who):<20}  "
                   f"{printable(repr(row.body))}")
    return Outcome(out=out)
