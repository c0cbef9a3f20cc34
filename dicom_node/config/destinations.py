"""Destinations, one array of tables per kind: [[destinations]] (DICOM C-STORE), [[folder_destinations]].

A new kind is a section type here (and a sender in dicom_node/senders/).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.config.checks import NAME_RE, check_ae, check_port


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

    def __post_init__(self) -> None:
        if (self.tls_ca or self.tls_cert) and not self.tls:
            raise ValueError(f"destinations.{self.name}: tls_ca/tls_cert given but tls is false")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"destinations.{self.name}.tls_cert and tls_key must be set together")
        if not NAME_RE.match(self.name):
            raise ValueError(f"destination name must be 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        check_ae(f"destinations.{self.name}.ae_title", self.ae_title)
        check_port(f"destinations.{self.name}.port", self.port)
        if not self.host:
            raise ValueError(f"destinations.{self.name}.host must not be empty")


@dataclass(frozen=True, slots=True)
class FolderDestinationSection:
    name: str
    path: str

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"destination name must be 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        if not self.path:
            raise ValueError(f"folder_destinations.{self.name}.path must not be empty")


Destination = DestinationSection | FolderDestinationSection
