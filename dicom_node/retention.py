"""Retention: finished work older than retention.done_days goes; failed or rejected work never does."""

from __future__ import annotations

import logging

from dicom_node.config import RetentionSection
from dicom_node.ledger import Ledger
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)
DAY_S = 86400.0


def sweep_retention(ledger: Ledger, spool: Spool, cfg: RetentionSection, *, now: float) -> int:
    """Remove `done` series (ledger rows, source and derived files) finished before the cutoff; how many."""
    removed = ledger.purge_done(now - cfg.done_days * DAY_S)
    for source_uid, derived_uid in removed:
        spool.remove_source(source_uid)
        if derived_uid:
            spool.remove_derived(derived_uid)
        logger.info("retention: removed series %s and its derived series %s", source_uid, derived_uid)
    return len(removed)
