"""`dmc`: the command line. Each subcommand parses its arguments and calls the library.

Errors users can cause (DmcError) print as one line and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import DmcError, environment_error, interruption, sigterm_interrupts


def _add_notes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notes", help="print as JSON the notes the pipeline takes from one MIDI file")
    p.add_argument("file", help="a .mid/.midi file")
    p.add_argument("--params", default="params.yaml", help="params.yaml to read `prepare.programs` from")
    p.set_defaults(run=_run_notes)


def _run_notes(args: argparse.Namespace) -> None:
    from pipeline.data import midi

    midi.write_notes_json(sys.stdout, args.file, programs=midi.programs_from_params(args.params))


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="print the U-Net's per-block parameter summary")
    p.add_argument("--preset", default="full")
    p.set_defaults(run=_run_model)


def _run_model(args: argparse.Namespace) -> None:
    from pipeline.model import unet

    print(unet.summary(args.preset))


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="compose new pieces as MIDI with the trained or the shipped model")
    p.add_argument("out", help="output folder (created if missing); files are sample_000.mid, ...")
    p.add_argument("--n", type=int, default=8, help="pieces to generate (default 8)")
    p.add_argument("--model", "--checkpoint", dest="model", metavar="NAME|PATH",
                   help="a shipped model (see `dmc models`) or a checkpoint file (default: models/model.pt "
                   "of this checkout, else the shipped bach model)")
    # Sampler options default to None: GenerateOptions holds the defaults, and importing it here would
    # load torch for every `dmc` command.
    p.add_argument("--sampler", help="ddpm (all T steps; the default for note-layout models), ddim, dpm++ or "
                   "unipc")
    p.add_argument("--steps", type=int, help="denoising steps of ddim, dpm++ or unipc (alone: DDIM)")
    p.add_argument("--eta", type=float, help="DDIM noise: 0 deterministic, 1 like DDPM")
    p.add_argument("--guard", help="keep x_0 estimates in the data's range: clip, step_clip, dynamic or none")
    p.add_argument("--chord-snap", type=float, metavar="BEATS", help="shorter deltas become chords")
    p.add_argument("--length", type=int, help="notes per piece (default: the model's seq_len); "
                   "longer pieces are generated window by window")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="the same seed gives identical files")
    p.add_argument("--tempo", type=float, default=120.0, help="beats per minute (default 120)")
    p.add_argument("--quantize", metavar="GRID",
                   help="snap the rhythm to a grid such as 1/16, or auto: the training data's grid")
    p.add_argument("--prompt", type=Path, metavar="FILE.mid", help="continue the start of this MIDI file")
    p.add_argument("--prompt-notes", type=int, default=32, metavar="K", help="prompt notes kept (default 32)")
    p.add_argument("--keep", metavar="GROUPS", help="harmonize/accompany: keep these instrument groups of "
                   "the prompt whole (comma-separated, e.g. soprano) and generate the model's other rows")
    p.add_argument("--audio", default="", metavar="FORMAT", help="also render wav, ogg or mp3 (fluidsynth)")
    p.add_argument("--plot", action="store_true", help="also write a piano-roll PNG per piece")
    p.add_argument("--device", help="cpu, cuda, mps (default: the fastest present)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    from pipeline.compose.generate import generate_files
    from pipeline.compose.options import GenerateOptions

    sampler = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("eta", args.eta),
                                 ("guard", args.guard), ("chord_snap", args.chord_snap),
                                 ("quantize", args.quantize)) if v is not None}
    if args.steps is not None and args.sampler is None:  # a step count asks for a sampler that takes one
        sampler["sampler"] = "ddim"
    opts = GenerateOptions(
        **sampler, n=args.n, length=args.length, batch_size=args.batch_size, seed=args.seed,
        tempo=args.tempo, audio=args.audio, plot=args.plot, prompt=args.prompt,
        prompt_notes=args.prompt_notes, keep=_groups(args.keep), device=args.device,
        progress=False if args.quiet else None)
    summary = generate_files(args.out, opts, args.model, log=lambda line: print(line, file=sys.stderr))
    midis = sum(name.endswith(".mid") for name in summary["files"])
    print(f"generate: {midis} pieces of {summary['notes_per_piece']} notes in {args.out} "
          f"({summary['sampler']}-{summary['steps']}, {summary['seconds']:.1f} s, "
          f"{summary['pieces_per_s']:.1f} pieces/s)")


def _groups(text: str | None) -> tuple[str, ...]:
    """`--keep soprano, alto` -> ("soprano", "alto")."""
    return tuple(g.strip() for g in (text or "").split(",") if g.strip())


def _add_evaluate_harmony(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-harmony", help="harmonize the test split's melodies (keep the soprano, "
                       "generate the rest) and measure them against Bach and a Markov baseline")
    p.add_argument("--model", "--checkpoint", dest="model", metavar="NAME|PATH",
                   help="a multi-row model (default: models/model.pt of this checkout)")
    p.add_argument("--keep", default="", metavar="GROUPS", help="the parts kept from each test file "
                   "(comma-separated; default: the model's first row, e.g. soprano)")
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"), help="its test split's files")
    p.add_argument("--manifest", type=Path, default=Path("data/manifest.json"), help="where the files are")
    p.add_argument("--limit", type=int, help="harmonize only the first N test files")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=16, help="denoising steps (default 16, as dmc harmonize)")
    p.add_argument("--guard", default="step_clip")
    p.add_argument("--resample", type=int, default=1, metavar="R",
                   help="grid-layout models: take each denoising step R times (RePaint; default 1)")
    _add_repair(p)
    p.add_argument("--quantize", default="auto", metavar="GRID",
                   help="the generated voices' rhythm grid: auto (the data's, default), 1/16, or '' for none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="params.yaml to read evaluate.frame_beats and hop_beats from")
    p.add_argument("--out", type=Path, default=Path("metrics/harmony.json"), help="the metrics, as JSON")
    p.add_argument("--samples", type=Path, metavar="DIR", help="also write each harmonization (MIDI, PNG)")
    p.add_argument("--device", help="cpu, cuda, mps (default: the fastest present)")
    p.set_defaults(run=_run_evaluate_harmony)


def _run_evaluate_harmony(args: argparse.Namespace) -> None:
    import yaml

    from pipeline.compose.options import GenerateOptions, check_options
    from pipeline.evaluate import harmony

    # Only the frame lengths are read, so a params.yaml of another version of dmc serves as well.
    evaluate = (yaml.safe_load(args.params.read_text()) or {}).get("evaluate", {}) if args.params.is_file() \
        else {}
    if args.limit is not None and args.limit < 2:
        raise DmcError(f"--limit must be at least 2, got {args.limit}")
    opts = GenerateOptions(sampler=args.sampler, steps=args.steps, guard=args.guard, seed=args.seed,
                           quantize=args.quantize, batch_size=args.batch_size, device=args.device,
                           repair=args.repair)
    check_options(opts)
    report, groups = harmony.harmonize_checkout(
        args.model, opts, args.prepared, args.manifest, _groups(args.keep), args.limit, args.out,
        args.samples, evaluate.get("frame_beats", 16.0), evaluate.get("hop_beats", 8.0),
        log=lambda line: print(line, file=sys.stderr), resample=args.resample)
    print(f"evaluate-harmony: {len(report.files)} test files, {', '.join(report.kept)} kept, "
          f"{args.sampler}-{args.steps}, grid {args.quantize or 'none'}")
    print(report.table(groups))
    print(f"evaluate-harmony: wrote {args.out}" + (f" and {args.samples}/" if args.samples else ""))


def _add_repair(p: argparse.ArgumentParser) -> None:
    from pipeline.compose.options import REPAIR_ROUNDS

    p.add_argument("--repair", type=int, default=REPAIR_ROUNDS, metavar="N",
                   help="rounds of writing again the notes that make parallel fifths and octaves "
                   f"(default {REPAIR_ROUNDS}; 0: none)")


def _add_harmonize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("harmonize", help="write alto, tenor and bass under a melody (any one-track MIDI "
                       "file) with the shipped four-voice model")
    p.add_argument("melody", type=Path,
                   help="a MIDI file: its one track, or its soprano track, is the melody")
    p.add_argument("out", type=Path, help="output folder (created if missing): MELODY_000.mid, .ogg, .png")
    p.add_argument("--model", "--checkpoint", dest="model", default="bach-satb", metavar="NAME|PATH",
                   help="a grid-layout model: shipped (see `dmc models`) or a checkpoint (default bach-satb)")
    p.add_argument("--keep", default="soprano", metavar="GROUPS",
                   help="the parts of the file kept (default soprano; a one-track file is that part)")
    p.add_argument("--n", type=int, default=1, help="harmonizations to write (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives identical files")
    p.add_argument("--sampler", default="ddim", help="ddpm (all T steps), ddim, dpm++ or unipc")
    p.add_argument("--steps", type=int, default=16, help="denoising steps (default 16)")
    p.add_argument("--resample", type=int, default=1, metavar="R",
                   help="take each denoising step R times, re-noising in between (RePaint; default 1)")
    _add_repair(p)
    p.add_argument("--tempo", type=float, default=100.0, help="beats per minute (default 100)")
    p.add_argument("--audio", default="ogg", metavar="FORMAT",
                   help="render wav, ogg (default) or mp3 with fluidsynth; '' for none")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="no piano-roll PNG")
    p.add_argument("--device", help="cpu, cuda, mps (default: cpu)")
    p.set_defaults(run=_run_harmonize)


def _run_harmonize(args: argparse.Namespace) -> None:
    from pipeline.compose import harmonize
    from pipeline.compose.options import GenerateOptions, check_options

    opts = GenerateOptions(n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                           tempo=args.tempo, audio=args.audio, plot=args.plot, device=args.device,
                           prompt=args.melody, keep=_groups(args.keep), repair=args.repair)
    check_options(opts)
    model = harmonize.grid_model_path(args.model)
    if model is None:
        raise DmcError(f"--model {args.model}: a model of the note layout; harmonize needs a grid-layout "
                       "model (layout: grid), such as the shipped bach-satb")
    if args.resample < 1:
        raise DmcError(f"--resample must be at least 1, got {args.resample}")
    summary = harmonize.harmonize_files(args.melody, args.out, opts, model, opts.keep, args.resample,
                                        log=lambda line: print(line, file=sys.stderr))
    consonance = ", ".join(f"{c:.2f}" for c in summary["consonance"])
    print(f"harmonize: {args.n} harmonization(s) of {summary['melody_notes']} melody notes in {args.out} "
          f"({summary['sampler']}-{summary['steps']}, {summary['seconds']:.1f} s; consonant intervals "
          f"{consonance}): {', '.join(summary['files'])}")


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped and the locally trained models, or show one's card")
    p.add_argument("name", nargs="?", help="a shipped model: show its origin, evaluation and retrain command")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> None:
    from pipeline.compose import catalog

    if args.name:
        print(catalog.describe_model(args.name))
    else:
        print(catalog.format_models(catalog.list_models()))


def _add_export_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-model", help="turn this checkout's finished run into a shipped model "
                       "(pipeline/weights/NAME: weights, card with params, data hashes, evaluation)")
    p.add_argument("name", help="the model's name, e.g. bach")
    p.add_argument("--from", dest="checkpoint", type=Path, metavar="PATH",
                   help="the trained model (default: ROOT/models/model.pt); dvc.lock must record it")
    p.add_argument("--root", type=Path, default=Path("."), help="the checkout of the run (default: .)")
    p.add_argument("--dest", type=Path, help="folder to write NAME/ into (default: ROOT/pipeline/weights)")
    p.add_argument("--note", default="", help="a line for the card, e.g. what the model is for")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (default, half the size) or float32")
    p.set_defaults(run=_run_export_model)


def _run_export_model(args: argparse.Namespace) -> None:
    from pipeline.compose import catalog, shipped

    folder = catalog.export_model(args.name, args.root, args.checkpoint, args.dest, args.note, args.dtype)
    print(f"export-model: wrote {folder}")
    print(catalog.describe_model(args.name) if folder.parent.resolve() == shipped.WEIGHTS
          else f"retrain: {shipped.read_card(folder)['retrain']}")


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="list the datasets, or fetch one into raw_dir/NAME outside DVC")
    p.add_argument("name", nargs="?", help="the dataset to fetch (see --list)")
    p.add_argument("--list", action="store_true",
                   help="show each dataset: present locally?, size, licence, source")
    p.add_argument("--params", default="params.yaml", help="where to read raw_dir, urls and download.*")
    p.set_defaults(run=_run_download)


def _run_download(args: argparse.Namespace) -> None:
    from pipeline.data import datasets, download
    from pipeline.params import load_params

    params = load_params(args.params)
    if args.list or not args.name:
        print(download.describe_datasets(params))
        return
    dataset = datasets.get(args.name)
    root = dataset.fetch(Path(params["raw_dir"]) / dataset.name, params)
    print(f"download: {dataset.name}: {len(datasets.midi_files(root)):,} MIDI files under {root}")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the tracked executions side by side: a table and an OA figure")
    p.add_argument("--out", type=Path, default=Path("compare"),
                   help="where compare.txt, compare.csv and compare_oa.png go (default: compare/)")
    p.add_argument("--experiment", default="dmc", help="the MLflow experiment (default: dmc)")
    p.add_argument("--tracking-uri", help="the store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> None:
    from pipeline.record import compare

    result = compare.compare(args.out, args.tracking_uri, args.experiment)
    print(result["text"])
    print(f"compare: wrote {', '.join(str(f) for f in result['files'])}")
    print(f"compare: runs table (after `dmc ui`): {result['link']}")
    print(f"compare: the newest execution of each dataset compared: {result['compare_link']}")


def _add_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="serve MLflow's UI over this repository's store and print the links to "
                       "the runs table and to a comparison of each dataset's newest execution")
    p.add_argument("--port", type=int, default=5000, help="the port on 127.0.0.1 (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--open", action="store_true", help="open the comparison in a browser, where one exists")
    p.add_argument("--root", type=Path, default=Path("."),
                   help="the repository whose mlflow.db and mlartifacts/ to serve (default: .)")
    p.set_defaults(run=_run_ui)


def _run_ui(args: argparse.Namespace) -> None:
    from pipeline.record import ui

    code = ui.serve(args.root, args.host, args.port, args.open)
    if code not in (0, -15):  # -15: stopped by our own SIGTERM
        raise DmcError(f"ui: mlflow server exited with code {code}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in (_add_notes, _add_model, _add_generate, _add_harmonize, _add_evaluate_harmony, _add_models,
                _add_export_model, _add_download, _add_compare, _add_ui):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with sigterm_interrupts():  # from the start: on a busy machine even argparse takes a second
            args = _parser().parse_args(argv)
            from pipeline.threads import configure_threads

            note = configure_threads()  # before any subcommand imports torch
            if note:
                print(f"dmc: {note}", file=sys.stderr)
            args.run(args)
    except DmcError as err:
        print(f"dmc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line, exit 128 + the signal
        line, code = interruption(err)
        print(f"dmc: {line}", file=sys.stderr)
        return code
    except OSError as err:  # a full disk, a read-only folder: the environment's, said in one line
        line = environment_error(err)
        if line is None:
            raise
        print(f"dmc: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
