"""[[webhooks]]: a JSON POST per series event (dicom_node/webhooks.py delivers them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dicom_node.config.checks import MAX_PERIOD_S, MAX_TIMEOUT_S, NAME_RE, check_int_range, check_positive_upto

EVENTS = ("done", "failed", "rejected", "no_rule", "thin_series_exists")
DEFAULT_EVENTS = ["done", "failed", "rejected", "no_rule"]


@dataclass(frozen=True, slots=True)
class WebhookSection:
    url: str
    events: list[str] = field(default_factory=lambda: list(DEFAULT_EVENTS))
    token: str = ""                  # sent as "Authorization: Bearer <token>" when set
    name: str = ""                   # for logs and metrics; empty: the URL's host and port
    ca_file: str = ""                # TLS trust for https (system CAs when empty); verification is always on
    timeout_s: float = 5.0           # one POST, connect to answer
    retry_initial_s: float = 2.0     # backoff doubles from here ...
    retry_max_s: float = 60.0        # ... up to here
    max_attempts: int = 6            # then the event is dropped (and logged)
    queue_size: int = 1000           # events waiting for this receiver; beyond it new events are dropped

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhooks.url must be an http:// or https:// URL with a host, got {self.url!r}")
        if parts.password:
            raise ValueError("webhooks.url must not hold a password; use webhooks.token")
        if not self.events or len(set(self.events)) != len(self.events):
            raise ValueError(f"webhooks.events must be a non-empty list without repeats, got {self.events!r}")
        if unknown := sorted(set(self.events) - set(EVENTS)):
            raise ValueError(f"webhooks.events: unknown event(s) {unknown}; events are {list(EVENTS)}")
        if self.name and not NAME_RE.match(self.name):
            raise ValueError(f"webhooks.name must be 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        if self.ca_file and parts.scheme != "https":
            raise ValueError("webhooks.ca_file is set but webhooks.url is not https")
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise ValueError(f"webhooks.ca_file {self.ca_file}: no such file")
        check_positive_upto("webhooks.timeout_s", self.timeout_s, MAX_TIMEOUT_S, "one hour")
        if not 0 < self.retry_initial_s <= self.retry_max_s:
            raise ValueError("webhooks.retry_initial_s must be positive and not above webhooks.retry_max_s, "
                             f"got {self.retry_initial_s} and {self.retry_max_s}")
        check_positive_upto("webhooks.retry_max_s", self.retry_max_s, MAX_PERIOD_S, "one day")
        check_int_range("webhooks.max_attempts", self.max_attempts, 1, 100)
        check_int_range("webhooks.queue_size", self.queue_size, 1, 100000)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
