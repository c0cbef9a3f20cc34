"""`python -m synth <command>`: offline tools for researchers.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
heavy imports (torch) happen inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "infer": ("synth.infer_cli", "synthesize a thin-slice volume from a thick one (NIfTI/NRRD/DICOM folder)"),
    "simulate-thick": ("synth.research.simulate_cli", "make a thick-slice volume from a thin one"),
    "phantom": ("synth.research.phantom_cli", "generate synthetic 1-mm chest phantoms"),
    "train": ("synth.research.train_cli", "train CTHNet on paired or simulated data"),
    "sr4zct-pretrain": ("synth.research.sr4zct_pretrain", "pretrain the sr4zct starting point on real CT axial images"),
    "evaluate": ("synth.research.evaluate_cli", "evaluate a model against BIS and write a report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m synth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args._module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
