"""The source policy: which hosts, local files and credentials a fetch may reach.

The worker runs as the host's admin and executes what it downloads, so every gallery,
registry and download URL is treated as hostile. One ``SourcePolicy`` answers, for every
fetch path (the OCI client and its token realms, tarball downloads, local folders and
``file://`` URLs, gallery fetches and their mirrors):

* ``check_address``: a connection goes to a public address, or to a private one
  (loopback, private, link-local, multicast, reserved, unspecified; IPv4-mapped IPv6
  unwrapped first) only when ``LOCALAI_ADMIN_PRIVATE_HOSTS`` lists it. ``transport()``
  applies it after DNS resolution, on every connection (each redirect hop, the token
  realm) and connects to the address it checked, so a name cannot resolve to something
  else between the check and the connection.
* ``check_local``: a local file or folder is read only under ``LOCALAI_ADMIN_LOCAL_ROOTS``
  once symlinks and ``..`` are resolved, and only if it is a regular file or a folder;
  outside the roots, missing and forbidden paths get the same answer.
* ``check_gallery_entry``: an entry of a gallery fetched over the network names no
  local source at all.
* ``may_send_credentials``: registry credentials go to the registry's own host and to
  its token realm only when that is the same host, or an https host configured for it.

Every refusal is a ``SourceRefused`` whose message names the setting that would allow it.
No Django here: the services build the policy from settings and pass it in.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from backends.core.text import with_article

PRIVATE_HOSTS_SETTING = "LOCALAI_ADMIN_PRIVATE_HOSTS"
LOCAL_ROOTS_SETTING = "LOCALAI_ADMIN_LOCAL_ROOTS"
CREDENTIALS_SETTING = "LOCALAI_ADMIN_REGISTRY_CREDENTIALS"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}


class SourceRefused(ValueError):
    """A source the policy does not allow; the message names the setting that would."""


@dataclass(frozen=True)
class SourcePolicy:
    """What fetches may reach. The empty policy (the default) allows public addresses
    only and no local file at all."""

    # Host names (lower case) and IP addresses allowed on any port.
    hosts: frozenset[str] = frozenset()
    # (host name or IP address, port) pairs.
    host_ports: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[Network, ...] = ()
    # Folders local sources may be read from, symlinks resolved.
    local_roots: tuple[Path, ...] = field(default=())

    @classmethod
    def parse(
        cls,
        private_hosts: Iterable[str],
        local_roots: Iterable[str | os.PathLike[str]],
    ) -> SourcePolicy:
        """The policy of the settings' values; ValueError names a bad entry."""
        hosts: set[str] = set()
        host_ports: set[tuple[str, int]] = set()
        networks: list[Network] = []
        for raw in private_hosts:
            entry = raw.strip()
            if not entry:
                continue
            try:
                if "/" in entry:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                    continue
                host, port = _split_host_port(entry)
            except ValueError:
                raise ValueError(
                    f"{PRIVATE_HOSTS_SETTING}: {entry!r} is not a host, host:port or CIDR"
                ) from None
            if port is None:
                hosts.add(host)
            else:
                host_ports.add((host, port))
        roots = tuple(
            Path(os.path.realpath(root)) for root in local_roots if str(root).strip()
        )
        return cls(frozenset(hosts), frozenset(host_ports), tuple(networks), roots)

    # -- addresses ---------------------------------------------------------------------

    def check_address(self, host: str, port: int, address: str) -> None:
        """Refuse a connection to ``address`` (what ``host`` resolved to) unless it is
        public or listed."""
        ip = _unwrap(ipaddress.ip_address(address.split("%", 1)[0]))
        kind = special_kind(ip)
        if not kind or self._listed(_normal_host(host), port, ip):
            return
        shown = host if host == str(ip) else f"{host} ({ip})"
        raise SourceRefused(
            f"refused to connect to {shown}: {with_article(kind)} address; private addresses are "
            f"reached only when {PRIVATE_HOSTS_SETTING} lists the host, host:port or "
            "network"
        )

    def _listed(self, host: str, port: int, ip: Address) -> bool:
        names = {host, str(ip)}
        return (
            bool(names & self.hosts)
            or any((name, port) in self.host_ports for name in names)
            or any(ip in network for network in self.networks)
        )

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, every one of them allowed (a name that resolves
        partly inward is refused as a whole)."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[str] = []
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            self.check_address(host, port, address)
            if address not in addresses:
                addresses.append(address)
        return addresses

    def transport(
        self, *, verify: ssl.SSLContext | None = None, retries: int = 0
    ) -> httpx.HTTPTransport:
        """An httpx transport whose every connection is checked by this policy
        (``verify``: the TLS context, httpx's default when None).

        It connects directly: environment proxies are not used, as a proxy would
        resolve the names itself, after the check."""
        return _PolicyTransport(self, verify or httpx.create_ssl_context(), retries)

    # -- local files -------------------------------------------------------------------

    def check_local(self, path: str | os.PathLike[str], shown: str = "") -> Path:
        """The real path of a local source that may be read: a regular file or a folder
        under a local root. Outside the roots the answer is the same whether the path
        exists or not. Messages name ``shown`` (what the user gave), else ``path``."""
        shown = shown or os.fspath(path)
        try:
            real = Path(os.path.realpath(path))
        except ValueError:  # an embedded NUL (a "%00" in a file:// URL): no such path
            real = None
        if real is None or not any(
            real.is_relative_to(root) for root in self.local_roots
        ):
            raise SourceRefused(
                f"{shown} is not under a folder local sources may be read "
                f"from; {LOCAL_ROOTS_SETTING} lists those folders"
            )
        try:
            mode = real.stat().st_mode
        except OSError:
            # Inside the roots, saying so reveals nothing the admin did not choose.
            raise SourceRefused(f"file not found: {os.fspath(path)}") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise SourceRefused(
                f"{shown} is not a regular file or folder; only those are "
                f"read under {LOCAL_ROOTS_SETTING}"
            )
        return real

    def check_local_uri(self, uri: str) -> Path:
        """``check_local`` of a ``file://`` URL or a plain path."""
        return self.check_local(local_path(uri), uri)

    # -- gallery entries ---------------------------------------------------------------

    def check_gallery_entry(self, gallery_source: str, uris: Sequence[str]) -> None:
        """Refuse local sources in an entry of a gallery fetched over the network: the
        gallery's author does not get to read this host's files."""
        if not is_network_source(gallery_source):
            return
        for uri in uris:
            if uri and is_local_source(uri):
                raise SourceRefused(
                    f"{uri!r} is a local source in a gallery fetched over the network; "
                    "only a gallery read from a file:// URL under "
                    f"{LOCAL_ROOTS_SETTING} may name local sources"
                )


# -- what a URI is ---------------------------------------------------------------------


def is_local_source(uri: str) -> bool:
    """A ``file:`` URL or a path on this host (what ``sources.classify`` reads as one)."""
    text = uri.strip()
    # oci-layout: names an imported offline kit's folder (backends.core.kits).
    return text.lower().startswith(("file:", "oci-layout:")) or text.startswith(
        ("/", "./", "../", "~")
    )


def is_network_source(source: str) -> bool:
    """A gallery source read over the network (http, https, github: shorthand); ""
    (no gallery: an external install) is not."""
    text = source.strip().lower()
    return bool(text) and not text.startswith("file:")


def local_path(uri: str) -> Path:
    """The path a ``file://`` URL or a plain path names."""
    if uri.lower().startswith("file:"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            # file://host/... would be a network share; only local paths are meant.
            raise SourceRefused(f"{uri!r} must be file:///absolute/path")
        return Path(unquote(parts.path))
    return Path(uri)


def special_kind(ip: Address) -> str:
    """What makes ``ip`` non-public ("loopback", "private", ...), or "" if it is public."""
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    ):
        if flag:
            return kind
    return ""


def _unwrap(ip: Address) -> Address:
    # ::ffff:127.0.0.1 reaches 127.0.0.1; judge (and list) it as that.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _normal_host(host: str) -> str:
    host = host.strip().strip("[]").lower().rstrip(".")
    try:
        return str(_unwrap(ipaddress.ip_address(host)))
    except ValueError:
        return host


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """ "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        ipaddress.ip_address(host)
        port = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(entry)
    elif entry.count(":") > 1:
        host, port = entry, None
        ipaddress.ip_address(host)
    else:
        host, _, port_text = entry.partition(":")
        port = port_text if ":" in entry else None
    if not host:
        raise ValueError(entry)
    number = None
    if port is not None:
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(entry)
    return _normal_host(host), number


# -- credentials -----------------------------------------------------------------------


def may_send_credentials(
    registry: httpx.URL, realm: httpx.URL, realms: Iterable[str] = ()
) -> bool:
    """May the credentials of the registry at ``registry`` go to the token ``realm``?

    Yes when the realm is on the registry's own host (over https, or over the scheme the
    registry itself is reached by), or is an https host listed in ``realms`` (the
    registry's "realms" in LOCALAI_ADMIN_REGISTRY_CREDENTIALS). Never over plain HTTP to
    another host."""
    realm_host = realm.host.lower()
    secure = realm.scheme == "https"
    if realm_host == registry.host.lower():
        return secure or realm.scheme == registry.scheme
    if not secure:
        return False
    port = realm.port or _DEFAULT_PORTS["https"]
    for listed in realms:
        host, listed_port = _split_host_port(
            listed.removeprefix("https://").rstrip("/")
        )
        if host == _normal_host(realm_host) and listed_port in (None, port):
            return True
    return False


# -- the transport ---------------------------------------------------------------------


class _PolicyBackend(httpcore.NetworkBackend):
    """Resolves, checks, then connects to the checked address; the TLS layer still
    gets the URL's host name for SNI and certificate checks (httpcore passes it to
    ``start_tls`` itself), and httpx sends it as the Host header."""

    def __init__(self, policy: SourcePolicy) -> None:
        self._policy = policy
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self._policy.resolve(host, port):
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise SourceRefused("unix sockets are never a source")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _PolicyTransport(httpx.HTTPTransport):
    def __init__(
        self, policy: SourcePolicy, verify: ssl.SSLContext, retries: int
    ) -> None:
        super().__init__(verify=verify, trust_env=False)
        # httpx has no parameter for httpcore's network backend: its pool is replaced
        # by one built the same way (httpx's default limits) but with the policy's backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=verify,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            retries=retries,
            network_backend=_PolicyBackend(policy),
        )


# -- the process default -----------------------------------------------------------------

_default = SourcePolicy()


def default_policy() -> SourcePolicy:
    """The policy of a caller that passes none: public addresses only, no local file
    (the services always pass the one built from settings; the tests replace this)."""
    return _default


def set_default_policy(policy: SourcePolicy) -> SourcePolicy:
    """Replace the default policy; returns the previous one."""
    global _default
    previous, _default = _default, policy
    return previous
