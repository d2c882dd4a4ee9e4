"""Who is looking at the dashboard, decided by something the browser cannot forge.

The web service reads the database as one role for everyone, so the database cannot tell viewers
apart; this module does. A request is from a user only when it carries `[web] user_header`
(`X-Forwarded-User`) *and* comes from an address in `[web] trusted_proxies`: a reverse proxy
(oauth2-proxy, Apache mod_auth_*) that authenticated the person and sets the header itself. The
header from anywhere else is ignored, as if absent: a browser can send any header it likes.

What a viewer may see: the queue, tasks, jobs and usage of everyone (as `maestro` shows any user);
commands, settings that could hold secrets (the exec line) and logs only of their own tasks, all of
them for an admin, and everything for everyone with `[web] public = true` (a trusted lab).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from orchestra.config import WebConfig
from orchestra.naming import USER_NAME


@dataclass(frozen=True)
class Viewer:
    user: str | None  # the authenticated login, or None (anonymous)
    admin: bool = False
    public: bool = False  # [web] public: everyone sees everything

    def sees_private(self, owner: str) -> bool:
        """May this viewer read `owner`'s commands and logs?"""
        return self.public or self.admin or (self.user is not None and self.user == owner)

    @property
    def label(self) -> str:
        if self.user is None:
            return "anonymous (public)" if self.public else "anonymous"
        return f"{self.user} (admin)" if self.admin else self.user


@lru_cache(maxsize=64)
def _networks(proxies: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def trusted(config: WebConfig, client_host: str | None) -> bool:
    """Is the peer address one of the configured reverse proxies?"""
    if not client_host or not config.trusted_proxies:
        return False
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:  # a Unix socket peer or a test client's made-up host: not a proxy we know
        return False
    return any(address in net for net in _networks(config.trusted_proxies))


def viewer_for(config: WebConfig, client_host: str | None, header_value: str | None,
               admins: frozenset[str] = frozenset()) -> Viewer:
    """The viewer of one request (`header_value`: the raw `[web] user_header`, if any)."""
    user = None
    if header_value and trusted(config, client_host):
        name = header_value.strip().split("@", 1)[0]  # oauth2-proxy may pass an e-mail address
        if USER_NAME.fullmatch(name):
            user = name
    return Viewer(user=user, admin=user is not None and user in admins, public=config.public)


def hidden_note(owner: str) -> str:
    """What stands in for a private field the viewer may not read, with the two ways to see it
    (docs/web.md: a reverse proxy that authenticates users, or a dashboard only its owner reaches)."""
    return f"hidden: sign in as {owner} through the proxy, or set [web] public = true on a private dashboard"
