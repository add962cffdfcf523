"""The SSRF guard: a webhook target must be https and resolve only to public addresses
(unless ``webhooks.allow_private_targets``); an attempt connects to the address that was
checked."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from app.config import WebhookSettings


class TargetRefused(Exception):
    """A webhook URL that may not be called (scheme, form or address)."""


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: ``url`` names the checked address when pinned."""

    url: httpx.URL
    host_header: str | None
    sni_hostname: str | None


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _public(ip: _Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _parse_url(url: str, settings: WebhookSettings) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decoding an invalid IDNA label (xn--…) raises here
    except (httpx.InvalidURL, TypeError, ValueError):
        raise TargetRefused("the URL is not valid") from None
    allowed = ("https", "http") if settings.allow_private_targets else ("https",)
    if parsed.scheme not in allowed:
        raise TargetRefused("the URL must use https")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    if parsed.userinfo:
        raise TargetRefused("the URL must not carry credentials")
    if parsed.fragment:
        raise TargetRefused("the URL must not have a fragment")
    return parsed


async def _resolve(host: str, port: int) -> list[_Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5
        )
    except (OSError, TimeoutError, UnicodeError):  # UnicodeError: a label IDNA cannot encode
        raise TargetRefused(f"the host {host} does not resolve") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def check_target(url: str, settings: WebhookSettings) -> Target:
    """Refuse a URL that is not https or resolves to a non-public address.

    With ``allow_private_targets`` any http(s) URL passes and is called as is.
    Otherwise every address the host resolves to must be public, and the
    returned target connects to the first of them (TLS still verifies the
    certificate against the host name).
    """
    parsed = _parse_url(url, settings)
    if settings.allow_private_targets:
        return Target(url=parsed, host_header=None, sni_hostname=None)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await _resolve(parsed.host, port)
    if not addresses or not all(_public(a) for a in addresses):
        raise TargetRefused(
            "the URL resolves to a private, loopback, link-local or reserved address"
        )
    pinned = str(addresses[0])
    if pinned == parsed.host:
        return Target(url=parsed, host_header=None, sni_hostname=None)
    return Target(
        url=parsed.copy_with(host=pinned),
        host_header=parsed.netloc.decode("ascii"),
        sni_hostname=parsed.host,
    )
