"""`dmc`: the command line. Each subcommand parses its arguments and calls the library.

Errors users can cause (DmcError) print as one line and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.errors import DmcError


def _add_notes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notes", help="print as JSON the notes the pipeline takes from one MIDI file")
    p.add_argument("file", help="a .mid/.midi file")
    p.add_argument("--params", default="params.yaml", help="params.yaml to read `prepare.programs` from")
    p.set_defaults(run=_run_notes)


def _run_notes(args: argparse.Namespace) -> None:
    from pipeline import midi

    print(midi.notes_json(args.file, programs=midi.programs_from_params(args.params)))


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="print the U-Net's per-block parameter summary")
    p.add_argument("--preset", default="full")
    p.set_defaults(run=_run_model)


def _run_model(args: argparse.Namespace) -> None:
    from pipeline import model

    print(model.summary(args.preset))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in (_add_notes, _add_model):
        add(sub)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except DmcError as err:
        print(f"dmc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
