"""Requests MSaaS makes to addresses its clients name (callbacks, song links), through requests-hardened: every connection,
redirects included, refused when it goes to a private, loopback, link-local or metadata address unless `allow_private`
(CALLBACK_ALLOW_PRIVATE; the embedded default on loopback), with timeouts and MSaaS's own user agent."""

from __future__ import annotations

from urllib.parse import urlparse

MAX_URL = 2048


def check_url(url: object, what: str) -> str:
    """`url` when it is an http(s) URL with a host, of at most MAX_URL characters; else ValueError saying so of `what`."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise ValueError(f"{what} must be a string of at most {MAX_URL} characters")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host")
    return url


def session(allow_private: bool, timeout_s: float, agent: str, redirects: bool = False):
    """A requests session (use it as a context manager); `redirects`: followed (each hop filtered too), at most 5."""
    from requests_hardened import Config, HTTPSession

    config = Config(
        ip_filter_enable=not allow_private,
        ip_filter_allow_loopback_ips=allow_private,
        never_redirect=not redirects,
        default_timeout=(min(5.0, timeout_s), timeout_s),
        user_agent_override=agent,
    )
    http = HTTPSession(config)
    http.max_redirects = 5
    return http


def forbidden(exc: Exception) -> bool:
    """requests-hardened refusing a private, loopback or metadata address: no later try will be allowed either."""
    from requests_hardened.ip_filter import InvalidIPAddress

    return isinstance(exc, InvalidIPAddress)
