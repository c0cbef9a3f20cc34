"""One typed config object from one TOML file; unknown keys and wrong types are errors.

  checks.py        AE titles, ports, finite and bounded numbers
  node.py          [node]: one flat table, typed parts (identity, listen, timing, associations, storage, roles)
  sections.py      [series], [send], [retention], [database], [web]; the self-check keys of [synth]
  destinations.py  [[destinations]], [[folder_destinations]], [[dicomweb_destinations]]; transfer_syntax
  rules.py         [[rules]]: match (DICOM keyword or CallingAE → regex or range), backend, destinations
  webhooks.py      [[webhooks]]: a JSON POST per series event
  load.py          NodeConfig, parse_config, load_config, to_dict (check-config, secrets redacted)
"""

from __future__ import annotations

from dicom_node.config.destinations import (
    TRANSFER_SYNTAXES,
    Destination,
    DestinationSection,
    DicomwebDestinationSection,
    FolderDestinationSection,
)
from dicom_node.config.load import DEFAULT_CONFIG, NodeConfig, load_config, parse_config, redact_url, to_dict
from dicom_node.config.node import (
    DEFAULT_MAX_PDU,
    AssociationPolicy,
    Identity,
    Listener,
    NodeSection,
    Roles,
    Storage,
    Timing,
)
from dicom_node.config.rules import CALLING_AE, Condition, RuleSection
from dicom_node.config.sections import (
    CHECK_FAIL_POLICIES,
    DatabaseSection,
    RetentionSection,
    SelfCheckSection,
    SendSection,
    SeriesSection,
    SkipIfThinSection,
    WebSection,
)
from dicom_node.config.webhooks import WebhookSection

__all__ = [
    "CALLING_AE", "CHECK_FAIL_POLICIES", "DEFAULT_CONFIG", "DEFAULT_MAX_PDU", "TRANSFER_SYNTAXES", "AssociationPolicy",
    "Condition", "DatabaseSection", "Destination", "DestinationSection", "DicomwebDestinationSection",
    "FolderDestinationSection", "Identity", "Listener", "NodeConfig", "NodeSection", "RetentionSection", "Roles",
    "RuleSection", "SelfCheckSection", "SendSection", "SeriesSection", "SkipIfThinSection", "Storage", "Timing",
    "WebSection", "WebhookSection", "load_config", "parse_config", "redact_url", "to_dict",
]
