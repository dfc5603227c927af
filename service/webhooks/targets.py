"""Where a webhook may go: the shape of its URL at submit, and the address a delivery connects to (SSRF).

A webhook URL is the user's, so it must not become a way into the server's own network: loopback, private, link-local,
shared (CGNAT), multicast, reserved and unspecified addresses are refused, in IPv4 and IPv6 alike, including IPv4 inside
IPv6 (mapped `::ffff:a.b.c.d`, 6to4, Teredo, NAT64 `64:ff9b::/96`). What is checked is the address the name resolves
to, never the name: at submit (a clear 422 at once) and again at every delivery (the name may point elsewhere by then),
and the delivery connects to exactly the address it checked (no second lookup for an attacker's DNS to answer
differently: no rebinding). Redirects are never followed. An operator may allow ranges that are not public
(WEBHOOK_ALLOW_NETS: an internal receiver, or 127.0.0.0/8 for tests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config import IPNetwork
from ..errors import JobRequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A job's ends a webhook can announce, each as the event type `job.<status>`.
EVENTS = ("completed", "failed", "cancelled", "expired")
FIELD = "webhook"
MAX_URL_CHARS = 2048
# What the contract promises a webhook URL may look like: http(s); a host name (ASCII labels), an IPv4 address or a
# full-form IPv6 one; a port 1-65535; a printable-ASCII path and query, no fragment. Every URL of this shape passes
# split_url (the server takes a few more: compressed IPv6, non-ASCII names and paths); its address is judged apart.
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL_PATTERN = (
    rf"^https?://(?:{_LABEL}(?:\.{_LABEL})*\.?|\[(?:[0-9A-Fa-f]{{1,4}}:){{7}}[0-9A-Fa-f]{{1,4}}\])"
    rf"(?::{_PORT})?(?:/[!-\"$-~]*)?$"
)

# (host, port) -> the addresses it resolves to, as text. The system resolver by default; tests give their own names.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class WebhookRefused(JobRequestError):
    """A webhook URL whose host is not one a delivery may reach (`webhook_url_refused`), or has no address
    (`webhook_host_unknown`): a 422 at submit, a failed attempt at delivery."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, field=f"{FIELD}.url")


@dataclass(frozen=True, slots=True)
class Target:
    """A checked destination: the URL as given, and the one address to connect to."""

    url: str
    scheme: str
    host: str  # as the Host header and TLS (SNI, certificate) name it, IDNA-encoded
    port: int
    path: str  # path and query
    address: str

    @property
    def request_url(self) -> str:
        """The URL with the checked address in place of the name: the connection goes nowhere else."""
        where = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{where}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


def parse_webhook(raw: Any) -> dict[str, Any]:
    """The body's `webhook` ({"url", "events"?}) checked for shape; events default to every end. 422 otherwise."""
    if not isinstance(raw, dict):
        raise _invalid(FIELD, '\'webhook\' must be an object: {"url": "https://…", "events": ["completed", …]}.')
    unknown = sorted(set(raw) - {"url", "events"})
    if unknown:
        raise _invalid(f"{FIELD}.{unknown[0]}", f"Unknown field 'webhook.{unknown[0]}'; a webhook has url and events.")
    url = raw.get("url")
    if not isinstance(url, str):
        raise _invalid(f"{FIELD}.url", "'webhook.url' is required: the http(s) URL to POST the job's events to.")
    split_url(url)
    events = raw.get("events", list(EVENTS))
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e in EVENTS for e in events)
        or len(set(events)) != len(events)
    ):
        raise _invalid(
            f"{FIELD}.events",
            f"'webhook.events' must be a non-empty list of distinct events among {', '.join(EVENTS)}.",
        )
    return {"url": url, "events": [e for e in EVENTS if e in events]}


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of a webhook URL, or 422 invalid_webhook saying what is wrong."""
    where = f"{FIELD}.url"
    if len(url) > MAX_URL_CHARS or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in url):
        raise _invalid(
            where, f"'webhook.url' must be a URL of at most {MAX_URL_CHARS} characters, without spaces or controls."
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _invalid(where, f"'webhook.url' is not a valid URL ({exc}).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(where, "'webhook.url' must be an http:// or https:// URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise _invalid(where, "'webhook.url' must not carry a user name or password; deliveries are signed instead.")
    if parts.fragment:
        raise _invalid(where, "'webhook.url' must not have a #fragment (it is never sent).")
    try:
        host = parts.hostname.rstrip(".").encode("idna").decode("ascii") if not _literal(parts.hostname) else ""
    except UnicodeError:
        raise _invalid(where, "'webhook.url' has a host name that is not valid.") from None
    host = host or parts.hostname
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, host.lower(), port, path


def refusal(address: str, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why a delivery may not connect to this address (None: it may): it is not a public one and no allowed range
    holds it. IPv4 carried inside IPv6 is judged as the IPv4 address it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (%eth0) says nothing about the address
    inner = embedded_ipv4(ip)
    # The IPv4 inside says best what it is; a mapped address is nothing but that IPv4 (a socket connects to it), the
    # tunnels' (6to4, Teredo, NAT64) outer address is judged too.
    mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
    judged: list[IPAddress] = [ip] if inner is None else [inner] if mapped else [inner, ip]
    if any(a in net for a in judged for net in allowed if a.version == net.version):
        return None
    for a in judged:
        for test, name in (
            ("is_loopback", "loopback"),
            ("is_link_local", "link-local"),
            ("is_multicast", "multicast"),
            ("is_unspecified", "unspecified"),
            ("is_reserved", "reserved"),
            ("is_private", "private"),
        ):
            if getattr(a, test):
                return name
        if not a.is_global:
            return "not public"
    return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


async def resolve(url: str, *, resolver: Resolver, allowed: Sequence[IPNetwork], timeout: float) -> Target:
    """The checked Target of a webhook URL: its host's addresses, the first one a delivery may reach. Refused
    (webhook_url_refused) when none may; webhook_host_unknown when the name has no address (or no answer in time)."""
    scheme, host, port, path = split_url(url)
    if _literal(host):
        addresses: Sequence[str] = [host]
    else:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolver(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise WebhookRefused(
                "webhook_host_unknown",
                f"The webhook host {host!r} could not be resolved ({_why(exc)}): check the URL.",
            ) from None
        if not addresses:
            raise WebhookRefused("webhook_host_unknown", f"The webhook host {host!r} has no address: check the URL.")
    reasons = []
    for address in addresses:
        why = refusal(address, allowed)
        if why is None:
            return Target(url=url, scheme=scheme, host=host, port=port, path=path, address=address.split("%", 1)[0])
        reasons.append(f"{address} ({why})")
    named = "" if _literal(host) else f"{host!r} resolves to "
    raise WebhookRefused(
        "webhook_url_refused",
        f"Webhooks only go to public addresses, and {named or 'the URL names '}{', '.join(reasons[:3])}. Use a "
        "public URL; an operator can allow a range with WEBHOOK_ALLOW_NETS.",
    )


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or exc.__class__.__name__


def _invalid(field: str, message: str) -> JobRequestError:
    return JobRequestError("invalid_webhook", message, field=field)
