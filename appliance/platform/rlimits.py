"""The open-file limit the caps need: SIP's TCP connections, the API's, and a margin.

systemd's default soft RLIMIT_NOFILE is 1024, below SIP's own cap of 1024 TCP connections
alone; the unit sets LimitNOFILE=65536 (docs/install.md). Started some other way, the
appliance raises its soft limit towards the hard one itself where it may (the unit's seccomp
filter forbids setrlimit, hence LimitNOFILE there), and warns when it stays too low: a flood
of connections would then use up the descriptors before any cap is reached."""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)

MARGIN = 256  # the database, media workers' sockets, the modem, webhooks, the log
WANTED = 65536  # what the unit's LimitNOFILE sets


def ensure_open_files(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to WANTED (at most the hard limit) if it is below NEEDED;
    warn if it stays below. The soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = WANTED if hard == resource.RLIM_INFINITY else min(hard, max(WANTED, needed))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as err:  # seccomp (EPERM), or a hard limit in flux
            logger.debug("- cannot raise RLIMIT_NOFILE: %s", err)
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning("x open-file limit %d is below the %d the connection caps need (hard "
                       "limit %d): a connection flood may lock out the API and new phones; "
                       "set LimitNOFILE=%d (docs/install.md)", soft, needed, hard, WANTED)
    return soft
