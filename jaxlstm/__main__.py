"""The ``jaxlstm`` command (also ``python -m jaxlstm``).

``jaxlstm explain --batch 4 --time 10 --input 8 --units 32`` prints every
shape and parameter of that LSTM (see ``jaxlstm.explain``); ``--plot FILE.png``
(or ``.svg``) also draws it unrolled over time (needs matplotlib).

Exit status: 0 on success, 2 for bad arguments (a one-line message, no
traceback), 1 when the plot cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys

PLOT_FORMATS = (".png", ".svg", ".pdf")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="jaxlstm",
        description="jaxlstm: LSTMs for JAX. Try: jaxlstm explain --batch 4 --time 10 --input 8 --units 32",
    )
    parser.add_argument("--version", action="version", version=f"jaxlstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain = commands.add_parser(
        "explain",
        help="walk through every shape and parameter of an LSTM configuration",
        description=(
            "Print, step by step, the shapes an LSTM computes for your sizes: input (B, T, D), one step "
            "x_t (B, D), gates (B, 4H), carry (B, H), the layer's output, what a following Dense layer "
            "receives, and every parameter with the total count."
        ),
    )
    explain.add_argument("--batch", type=int, required=True, metavar="B", help="sequences per batch")
    explain.add_argument("--time", type=int, required=True, metavar="T", help="time steps per sequence")
    explain.add_argument(
        "--input", dest="input_size", type=int, required=True, metavar="D", help="features per time step (input_size)"
    )
    explain.add_argument(
        "--units",
        type=int,
        required=True,
        metavar="H",
        help="size of the state vector (units = hidden_size = features)",
    )
    explain.add_argument("--layers", dest="num_layers", type=int, default=1, metavar="L", help="stacked layers (1)")
    explain.add_argument("--bidirectional", action="store_true", help="add a backward direction to every layer")
    explain.add_argument(
        "--merge",
        default="concat",
        choices=("concat", "sum", "mul", "ave"),
        help="how a bidirectional layer combines its two directions (concat)",
    )
    explain.add_argument(
        "--last-only",
        dest="return_sequences",
        action="store_false",
        help="return only the last step (B, H) instead of every step (B, T, H)",
    )
    explain.add_argument(
        "--proj-size",
        dest="proj_size",
        type=int,
        default=None,
        metavar="P",
        help="project h to P < H features (LSTMP, PyTorch's proj_size): h and the output get P, c keeps H",
    )
    explain.add_argument("--peepholes", action="store_true", help="peephole connections from c to the gates")
    explain.add_argument("--layer-norm", dest="layer_norm", action="store_true", help="layer-normalized LSTM")
    explain.add_argument("--cifg", action="store_true", help="coupled input-forget gate (f = 1 - i)")
    explain.add_argument(
        "--plot", metavar="FILE", help="also draw the network unrolled over time to FILE (.png, .svg or .pdf)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``jaxlstm`` command line; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help, --version, or a bad argument (already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    from .explain import explain

    prog = "jaxlstm explain"
    try:
        explanation = explain(
            args.batch,
            args.time,
            args.input_size,
            args.units,
            num_layers=args.num_layers,
            bidirectional=args.bidirectional,
            merge=args.merge,
            return_sequences=args.return_sequences,
            proj_size=args.proj_size,
            peepholes=args.peepholes,
            layer_norm=args.layer_norm,
            cifg=args.cifg,
        )
    except (TypeError, ValueError) as error:
        message = str(error)
        for name, flag in (("input_size", "--input"), ("num_layers", "--layers"), ("proj_size", "--proj-size")):
            message = message.replace(f"{name} must", f"{flag} must", 1)
        for flag in ("batch", "time", "units"):
            if message.startswith(f"{flag} must"):
                message = "--" + message
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    if args.plot is not None and os.path.splitext(args.plot)[1].lower() not in PLOT_FORMATS:
        print(f"{prog}: error: --plot must name a .png, .svg or .pdf file, got {args.plot!r}", file=sys.stderr)
        return 2

    _print(str(explanation))
    if args.plot is not None:
        try:
            from .diagram import draw

            draw(explanation, args.plot)
        except ImportError as error:
            print(f"{prog}: error: --plot needs matplotlib ({error}); pip install matplotlib", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"{prog}: error: cannot write {args.plot!r}: {error.strerror or error}", file=sys.stderr)
            return 1
        _print(f"\nDiagram written to {args.plot}")
    return 0


def _print(text: str) -> None:
    """Prints, degrading "·" and "…" to ASCII on a console that cannot encode them."""
    try:
        print(text)
    except UnicodeEncodeError:
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        print(text.replace("·", "*").replace("…", "...").encode(encoding, "replace").decode(encoding))
    except BrokenPipeError:  # `jaxlstm explain ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
