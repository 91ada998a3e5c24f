"""Bind policy and bearer-token check."""

from __future__ import annotations

import hmac
import ipaddress
import socket

from mcmfh.errors import MCMFHError


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (an unresolvable name is not)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the service beyond this machine without a token."""
    if not is_loopback_host(host) and not token:
        raise MCMFHError(
            f"refusing to listen on {host}, which is reachable from other machines, without --token "
            "(or bind to 127.0.0.1)"
        )


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer ...`` header against the token."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
