"""`vars campaign watch`: a live progress display of one campaign, from ``campaign_status``.

On a terminal: a block of text progress bars (one per method, then the total) with the
rate and ETA, redrawn in place every refresh. Elsewhere (a pipe, a log): one plain line per
refresh. Either way it stops once the campaign is finished or cancelled, or on Ctrl-C
(which leaves the campaign running). The renderers are plain functions of a CampaignStatus.

Bar cells: ``#`` done, ``x`` failed, ``>`` running, ``.`` pending.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from scheduler.status import CampaignStatus, MethodCounts, UnknownCampaign, campaign_status
from vars_core.store import StateStore

BAR_WIDTH = 30
ENDED = ("finished", "cancelled")


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def bar(counts: MethodCounts, width: int = BAR_WIDTH) -> str:
    """``[###x>>....]``: each kind's cells run up to floor(share so far x width), so the
    bar is full only when every session has ended; a kind too small for a cell of its own
    may show none (the counts beside the bar are exact)."""
    if counts.total <= 0:
        return "[" + "." * width + "]"

    def upto(n: int) -> int:
        return min(width, n * width // counts.total)

    done = upto(counts.done)
    failed = upto(counts.done + counts.failed) - done
    running = upto(counts.done + counts.failed + counts.running) - done - failed
    return "[" + "#" * done + "x" * failed + ">" * running + "." * (width - done - failed - running) + "]"


def rate_text(status: CampaignStatus) -> str:
    if status.sessions_per_hr is None:
        return "rate: unknown"
    return f"rate: {status.sessions_per_hr:.0f} sessions/hr"


def eta_text(status: CampaignStatus) -> str:
    if status.state == "finished":
        return "eta: finished"
    if status.state == "cancelled":
        return f"eta: cancelled, {status.pending} sessions will not run"
    if status.eta_s is None:
        return "eta: unknown until a session finishes"
    return f"eta: {fmt_duration(status.eta_s)}"


def render(status: CampaignStatus, width: int = BAR_WIDTH) -> list[str]:
    """The terminal block: a header, a bar per method and one for the total, rate and ETA."""
    total = MethodCounts(status.done, status.failed, status.running, status.total)
    rows = [*status.methods.items(), ("total", total)]
    name_w = max(len(name) for name, _ in rows)
    num_w = len(str(max(c.total for _, c in rows)))
    lines = [f"campaign {status.campaign_id} ({status.state})"]
    for name, counts in rows:
        lines.append(
            f"  {name:<{name_w}}  {bar(counts, width)}  {counts.done:>{num_w}}/{counts.total:<{num_w}} done"
            f"  {counts.failed} failed  {counts.running} running"
        )
    lines.append(f"  {rate_text(status)}  {eta_text(status)}")
    return lines


def plain_line(status: CampaignStatus, now: float | None = None) -> str:
    """One refresh as one line, for logs and pipes."""
    stamp = time.strftime("%H:%M:%S", time.localtime(time.time() if now is None else now))
    methods = ", ".join(f"{m} {c.done}/{c.total}" for m, c in status.methods.items())
    return (
        f"{stamp} {status.campaign_id} {status.state}: {status.done}/{status.total} done, "
        f"{status.failed} failed, {status.running} running; {methods}; {rate_text(status)}; {eta_text(status)}"
    )


def watch(
    store: StateStore,
    campaign_id: str,
    interval_s: float = 2.0,
    out: TextIO | None = None,
    tty: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CampaignStatus:
    """Show the campaign's progress every ``interval_s`` until it is finished or cancelled;
    return the last status. Raises UnknownCampaign (at once) for an unknown id, and lets
    KeyboardInterrupt through."""
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    drawn = 0
    while True:
        status = campaign_status(store, campaign_id)
        if tty:
            lines = render(status)
            if drawn:  # back to the block's first line, and clear to the end of the screen
                out.write(f"\x1b[{drawn}A\r\x1b[J")
            out.write("\n".join(lines) + "\n")
            drawn = len(lines)
        else:
            out.write(plain_line(status) + "\n")
        out.flush()
        if status.state in ENDED:
            return status
        sleep(interval_s)


def watch_command(
    store: StateStore,
    campaign_id: str,
    interval_s: float = 2.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`vars campaign watch`: the exit status (2 for an unknown id; 0 otherwise, Ctrl-C too)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        watch(store, campaign_id, interval_s, out=out, sleep=sleep)
    except UnknownCampaign as exc:
        print(f"error: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; campaign {campaign_id} keeps running "
            f"(`vars campaign cancel {campaign_id}` stops it)",
            file=out,
        )
    return 0


__all__ = ["bar", "plain_line", "render", "watch", "watch_command"]
