"""The one fact rendering reads from the host: the gateway user's uid, if it exists yet."""

from __future__ import annotations

import pwd


def gateway_uid_for(user: str) -> int:
    """The uid the config's account rules must not collide with.

    It is the gateway user's, not the uid of whoever runs ``render`` (often root or an
    operator). Before install the user does not exist and systemd-sysusers will pick a
    uid that no fixed id in the file uses; 0 then stands in, which no account may have.
    """
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return 0
