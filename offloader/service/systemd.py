"""The service's side of systemd's notify protocol (Type=notify): readiness, the
watchdog and stopping, for the scheduler and the worker processes' parent alike."""

from __future__ import annotations

import logging
import os
import socket

import anyio

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about readiness, watchdog or stopping. No-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            log.warning("sd_notify failed", extra={"socket": address})
            return False
    return True


async def watchdog() -> None:
    """Ping systemd's watchdog at half its period, when the unit sets one."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return
    period = int(usec) / 1e6 / 2
    while True:
        sd_notify("WATCHDOG=1")
        await anyio.sleep(period)
