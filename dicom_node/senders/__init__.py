"""Delivering derived series: one sender per destination kind behind one small interface.

  base.py       Sender, SendReport, CheckResult, SenderContext
  registry.py   @sender_for(SectionType) and build_sender(section, ctx)
  dimse.py      [[destinations]]: C-STORE (and C-ECHO)
  folder.py     [[folder_destinations]]: files into a folder
  dicomweb.py   [[dicomweb_destinations]]: STOW-RS over HTTP(S) (stow.py: the request body, the response)

Adding a kind: a config section type, a module here with its sender and `@sender_for`, and its import
below. Neither the node nor the send stage changes.
"""

from __future__ import annotations

from dicom_node.senders import dicomweb, dimse, folder  # noqa: F401 (each registers its destination kind)
from dicom_node.senders.base import CheckResult, Sender, SenderContext, SendReport
from dicom_node.senders.registry import build_sender, kinds

__all__ = ["CheckResult", "SendReport", "Sender", "SenderContext", "build_sender", "kinds"]
