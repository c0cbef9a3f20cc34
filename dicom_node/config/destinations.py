"""Destinations, one array of tables per kind: [[destinations]] (DICOM C-STORE), [[folder_destinations]],
[[dicomweb_destinations]] (DICOMweb STOW-RS).

A new kind is a section type here (and a sender in dicom_node/senders/). Every kind has
`transfer_syntax`: how the derived instances are encoded on their way there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from dicom_node.config.checks import NAME_RE, check_ae, check_int_range, check_port

# The encodings a destination may ask for (dicom_node.encoding maps them to transfer syntax UIDs).
TRANSFER_SYNTAXES = ("explicit-le", "jpeg-ls-lossless", "jpeg2000-lossless", "rle-lossless")
MAX_INSTANCES_PER_REQUEST = 1000


def check_transfer_syntax(where: str, value: str) -> None:
    if value not in TRANSFER_SYNTAXES:
        raise ValueError(f"{where}.transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)}, got {value!r}")


def check_name(value: str) -> None:
    if not NAME_RE.match(value):
        raise ValueError(f"destination name must be 1-64 of A-Z a-z 0-9 _ . -, got {value!r}")


@dataclass(frozen=True, slots=True)
class DestinationSection:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca: str = ""                 # CA bundle to verify the destination (system CAs when empty)
    tls_cert: str = ""               # client certificate, when the destination asks for one
    tls_key: str = ""
    transfer_syntax: str = "explicit-le"   # proposed first; uncompressed when the peer refuses it

    def __post_init__(self) -> None:
        if (self.tls_ca or self.tls_cert) and not self.tls:
            raise ValueError(f"destinations.{self.name}: tls_ca/tls_cert given but tls is false")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"destinations.{self.name}.tls_cert and tls_key must be set together")
        check_name(self.name)
        check_transfer_syntax(f"destinations.{self.name}", self.transfer_syntax)
        check_ae(f"destinations.{self.name}.ae_title", self.ae_title)
        check_port(f"destinations.{self.name}.port", self.port)
        if not self.host:
            raise ValueError(f"destinations.{self.name}.host must not be empty")


@dataclass(frozen=True, slots=True)
class FolderDestinationSection:
    name: str
    path: str
    transfer_syntax: str = "explicit-le"

    def __post_init__(self) -> None:
        check_name(self.name)
        check_transfer_syntax(f"folder_destinations.{self.name}", self.transfer_syntax)
        if not self.path:
            raise ValueError(f"folder_destinations.{self.name}.path must not be empty")


@dataclass(frozen=True, slots=True)
class DicomwebDestinationSection:
    """A DICOMweb server: STOW-RS to `{url}/studies`, TLS verified (system CAs, or `ca_file`)."""

    name: str
    url: str
    token: str = ""                  # bearer token, or username + password (basic); never both
    username: str = ""
    password: str = ""
    ca_file: str = ""
    instances_per_request: int = 50
    transfer_syntax: str = "explicit-le"

    def __post_init__(self) -> None:
        check_name(self.name)
        where = f"dicomweb_destinations.{self.name}"
        check_transfer_syntax(where, self.transfer_syntax)
        check_int_range(f"{where}.instances_per_request", self.instances_per_request, 1, MAX_INSTANCES_PER_REQUEST)
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{where}.url must be an http:// or https:// URL with a host, got {self.url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{where}.url must not carry credentials: use {where}.username and password")
        if parts.query or parts.fragment:
            raise ValueError(f"{where}.url must be the service root (STOW-RS goes to <url>/studies), "
                             "without ?query or #fragment")
        if self.token and (self.username or self.password):
            raise ValueError(f"{where}: give token (bearer) or username + password (basic), not both")
        if bool(self.username) != bool(self.password):
            raise ValueError(f"{where}.username and password must be set together")
        if self.ca_file and parts.scheme != "https":
            raise ValueError(f"{where}.ca_file is given but url is not https://")

    @property
    def stow_url(self) -> str:
        return self.url.rstrip("/") + "/studies"

    @property
    def is_loopback(self) -> bool:
        host = urlsplit(self.url).hostname or ""
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


Destination = DestinationSection | FolderDestinationSection | DicomwebDestinationSection
