"""TLS on the gateway's three sides: the client-facing gRPC port, the HTTP ports, and the connections to workers.

The settings (TlsConfig) are validated when the configuration is loaded: every certificate, key and CA file
is read and parsed then, so a missing, unreadable or invalid file stops startup with a ConfigError naming
its flag. The builders below turn them into what each listener or dialer takes: an ssl.SSLContext (the frame
relay, aiohttp) or grpc credentials (grpc.aio server and channels).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from flexlb.config_values import ConfigError

# TLS 1.2 suites: forward secrecy and AEAD only (RFC 9113 §9.2.2 forbids the others for HTTP/2); TLS 1.3's
# suites are configured apart by OpenSSL and are all acceptable
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
H2_ALPN = ("h2",)
HTTP1_ALPN = ("http/1.1",)


@dataclass(frozen=True)
class ServerTls:
    """TLS of one listener: its certificate chain and key; with a client CA, clients must show a certificate
    it signed (mTLS)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_file)


@dataclass(frozen=True)
class UpstreamTls:
    """TLS towards workers: the CA that signed their certificates ("": the system's trust store), an optional
    client certificate (mTLS) and the name their certificates are checked against ("": the worker's address)."""

    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""


@dataclass(frozen=True)
class TlsConfig:
    """TLS of the gRPC port, of the HTTP ports (management and HTTP API), and towards workers; all off by default."""

    grpc: ServerTls = field(default_factory=ServerTls)
    admin: ServerTls = field(default_factory=ServerTls)  # the management port and the HTTP API port
    upstream: UpstreamTls = field(default_factory=UpstreamTls)


@dataclass(frozen=True)
class TlsFlag:
    """One TLS flag of `flexlb serve`: its name, the CliOverrides field it arrives in, its --help."""

    flag: str
    cli: str
    help: str
    metavar: str = "FILE"


TLS_FLAGS: tuple[TlsFlag, ...] = (
    TlsFlag("--tls-cert", "tls_cert", "PEM certificate chain of the gRPC port: the port then speaks only TLS "
            "(1.2+, ALPN h2)"),
    TlsFlag("--tls-key", "tls_key", "PEM private key of --tls-cert (unencrypted)"),
    TlsFlag("--tls-client-ca", "tls_client_ca", "PEM CA certificates: gRPC clients must present a certificate "
            "signed by one of them (mTLS)"),
    TlsFlag("--admin-tls-cert", "admin_tls_cert", "PEM certificate chain of the management and HTTP API ports "
            "(HTTPS)"),
    TlsFlag("--admin-tls-key", "admin_tls_key", "PEM private key of --admin-tls-cert"),
    TlsFlag("--admin-tls-client-ca", "admin_tls_client_ca", "PEM CA certificates: HTTPS clients of those ports "
            "must present a certificate signed by one of them (mTLS)"),
    TlsFlag("--upstream-tls-ca", "upstream_tls_ca", "PEM CA certificates that signed the workers' certificates "
            "(turns on --upstream-tls)"),
    TlsFlag("--upstream-tls-cert", "upstream_tls_cert", "PEM client certificate the gateway shows workers (mTLS; "
            "turns on --upstream-tls)"),
    TlsFlag("--upstream-tls-key", "upstream_tls_key", "PEM private key of --upstream-tls-cert"),
    TlsFlag("--upstream-tls-server-name", "upstream_tls_server_name", "name the workers' certificates are checked "
            "against, and sent as SNI (default: each worker's address; turns on --upstream-tls)", "NAME"),
)


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(flag, f"cannot read {path!r}: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    # never let OpenSSL prompt on the terminal for an encrypted key
    return b""


def _check_certificates(flag: str, path: str) -> None:
    """`path` holds at least one valid PEM certificate (a chain, or CA certificates)."""
    if not path.strip():
        raise ConfigError(flag, "must not be empty")
    _read(flag, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        what = "holds no PEM certificate" if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND" else \
            "is not a valid PEM certificate file"
        raise ConfigError(flag, f"{path!r} {what} ({exc.reason or exc.library or 'OpenSSL'})") from None


def _check_pair(cert_flag: str, cert: str, key_flag: str, key: str) -> None:
    """The key file holds an unencrypted PEM private key matching the certificate's."""
    if not key.strip():
        raise ConfigError(key_flag, "must not be empty")
    data = _read(key_flag, key)
    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(key_flag, f"{key!r} holds no PEM private key")
    if b"ENCRYPTED" in data:
        raise ConfigError(key_flag, f"{key!r} is encrypted; give an unencrypted key (protect it by file permissions)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(key_flag, f"{key!r} is not the key of the certificate in {cert_flag}") from None
        raise ConfigError(key_flag, f"{key!r} is not a valid PEM private key ({exc.reason or exc.library})") from None


def _server_tls(prefix: str, cert: str | None, key: str | None, client_ca: str | None) -> ServerTls:
    cert_flag, key_flag, ca_flag = f"--{prefix}tls-cert", f"--{prefix}tls-key", f"--{prefix}tls-client-ca"
    if cert is None and key is None and client_ca is None:
        return ServerTls()
    if cert is None:
        raise ConfigError(key_flag if key is not None else ca_flag, f"needs {cert_flag} (and {key_flag})")
    if key is None:
        raise ConfigError(cert_flag, f"needs {key_flag}")
    _check_certificates(cert_flag, cert)
    _check_pair(cert_flag, cert, key_flag, key)
    if client_ca is not None:
        _check_certificates(ca_flag, client_ca)
    return ServerTls(cert, key, client_ca or "")


def tls_config(
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    admin_tls_cert: str | None = None,
    admin_tls_key: str | None = None,
    admin_tls_client_ca: str | None = None,
    upstream_tls: bool | None = None,
    upstream_tls_ca: str | None = None,
    upstream_tls_cert: str | None = None,
    upstream_tls_key: str | None = None,
    upstream_tls_server_name: str | None = None,
) -> TlsConfig:
    """The TLS settings from the flags' values (None: not given), every file read and checked; else ConfigError."""
    grpc_tls = _server_tls("", tls_cert, tls_key, tls_client_ca)
    admin_tls = _server_tls("admin-", admin_tls_cert, admin_tls_key, admin_tls_client_ca)
    given = (upstream_tls_ca, upstream_tls_cert, upstream_tls_key, upstream_tls_server_name)
    on = bool(upstream_tls) or any(v is not None for v in given)
    if upstream_tls is False and any(v is not None for v in given):
        raise ConfigError("--upstream-tls", "is off, but --upstream-tls-* options are given")
    if not on:
        return TlsConfig(grpc_tls, admin_tls)
    if upstream_tls_ca is not None:
        _check_certificates("--upstream-tls-ca", upstream_tls_ca)
    if (upstream_tls_cert is None) != (upstream_tls_key is None):
        raise ConfigError("--upstream-tls-cert" if upstream_tls_key is None else "--upstream-tls-key",
                          "needs --upstream-tls-cert and --upstream-tls-key together")
    if upstream_tls_cert is not None and upstream_tls_key is not None:
        _check_certificates("--upstream-tls-cert", upstream_tls_cert)
        _check_pair("--upstream-tls-cert", upstream_tls_cert, "--upstream-tls-key", upstream_tls_key)
    name = (upstream_tls_server_name or "").strip()
    if upstream_tls_server_name is not None and (not name or any(c in name for c in " /:")):
        raise ConfigError("--upstream-tls-server-name", f"expected a host name or IP address, got {name!r}")
    return TlsConfig(grpc_tls, admin_tls, UpstreamTls(True, upstream_tls_ca or "", upstream_tls_cert or "",
                                                      upstream_tls_key or "", name))


def check_with_election(tls: TlsConfig, election: bool, forwards_to_master: bool) -> None:
    """Replicas call each other's HTTP API port (notify, syncStatus) and, forwarding decisions, the master's gRPC
    port in plaintext: refuse TLS there rather than fail every replica-to-replica call."""
    if not election:
        return
    if tls.admin.enabled:
        raise ConfigError("--admin-tls-cert", "not supported with master election (WHALE_SYNC_LB_CONSISTENCY_CONFIG "
                          "needConsistency): replicas call each other's HTTP API port in plaintext")
    if tls.grpc.enabled and forwards_to_master:
        raise ConfigError("--tls-cert", "not supported with enableGrpcPrefillMaster: replicas forward decisions to "
                          "the master's gRPC port in plaintext")


# ---------------------------------------------------------------- builders


def server_context(tls: ServerTls, alpn: Sequence[str]) -> ssl.SSLContext:
    """The SSLContext of a listener: TLS 1.2+, AEAD suites, the given ALPN protocols, client certificates
    required when a client CA is set."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    # HTTP/2 forbids renegotiation (RFC 9113 §9.2.1); a client could also use it to cost the gateway handshakes
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    ctx.set_alpn_protocols(list(alpn))
    if tls.mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=tls.client_ca_file)
    return ctx


def grpc_server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """grpc credentials of the same listener settings (grpc.aio's port: the grpcio engine, the mock worker)."""
    ca = Path(tls.client_ca_file).read_bytes() if tls.mutual else None
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=tls.mutual)


def client_context(tls: UpstreamTls, alpn: Sequence[str] = H2_ALPN) -> ssl.SSLContext:
    """The SSLContext the frame relay dials workers with: their CA (or the system's), hostname check, TLS 1.2+."""
    ctx = ssl.create_default_context(cafile=tls.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(alpn))
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    return ctx


class Dialer:
    """How the gateway reaches workers: plaintext, or TLS with the configured CA, client certificate and name.
    Built once at startup and shared by the relay engines, the probes and the pollers."""

    def __init__(self, tls: UpstreamTls | None = None) -> None:
        self.tls = tls if tls is not None and tls.enabled else None
        self.ssl: ssl.SSLContext | None = None
        self._credentials: grpc.ChannelCredentials | None = None
        if self.tls is not None:
            t = self.tls
            self.ssl = client_context(t)
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(t.ca_file).read_bytes() if t.ca_file else None,
                private_key=Path(t.key_file).read_bytes() if t.cert_file else None,
                certificate_chain=Path(t.cert_file).read_bytes() if t.cert_file else None,
            )

    def server_hostname(self, host: str) -> str:
        """The name a worker's certificate must carry (and the SNI sent)."""
        return self.tls.server_name if self.tls is not None and self.tls.server_name else host

    def channel(self, target: str, options: Sequence[tuple[str, int | str]] = ()) -> grpc.aio.Channel:
        """A grpc.aio channel to the worker at `target` (`ip:port`)."""
        opts = list(options)
        if self._credentials is None:
            return grpc.aio.insecure_channel(target, options=opts)
        assert self.tls is not None
        if self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(target, self._credentials, options=opts)


PLAINTEXT = Dialer()
