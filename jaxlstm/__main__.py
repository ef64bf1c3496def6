"""The ``jaxlstm`` command (also ``python -m jaxlstm``).

``jaxlstm explain --batch 4 --time 10 --input 8 --units 32`` prints every
shape and parameter of that LSTM (see ``jaxlstm.explain``), ``--cell gru`` of
the GRU; ``--plot FILE.png`` (or ``.svg``) also draws an LSTM unrolled over
time (needs matplotlib).

``jaxlstm docs shapes`` prints a guide (the Markdown files of the repository's
``docs/``, shipped in the package as ``jaxlstm/guides/``), ``jaxlstm docs
shapes#inputs`` one section of it (the anchor error messages name), and
``jaxlstm docs`` lists the guides.

Exit status: 0 on success, 2 for bad arguments (a one-line message, no
traceback), 1 when the plot cannot be written.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import sys
from pathlib import Path

from .explain_shapes import CELLS
from .stack import MERGE_MODES

PLOT_FORMATS = (".png", ".svg", ".pdf")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="jaxlstm",
        description=(
            "jaxlstm: LSTMs for JAX. Try: jaxlstm explain --batch 4 --time 10 --input 8 --units 32, "
            "or jaxlstm docs shapes"
        ),
    )
    parser.add_argument("--version", action="version", version=f"jaxlstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain = commands.add_parser(
        "explain",
        help="walk through every shape and parameter of an LSTM or GRU configuration",
        description=(
            "Print, step by step, the shapes an LSTM (or, with --cell gru, a GRU) computes for your sizes: "
            "input (B, T, D), one step x_t (B, D), gates (B, 4H; a GRU's (B, 3H)), carry (B, H), the layer's "
            "output, what a following Dense layer receives, and every parameter with the total count."
        ),
    )
    _explain_arguments(explain)
    docs = commands.add_parser(
        "docs",
        help="print a guide (shapes, sequence-state, variants, performance, ...), or list them",
        description=(
            "Print one of jaxlstm's guides as Markdown, or one section of it: `jaxlstm docs shapes#inputs` "
            "prints the section that an error message pointing at docs/shapes.md#inputs means. "
            "Without a name, list the guides."
        ),
    )
    docs.add_argument(
        "guide",
        nargs="?",
        metavar="GUIDE[#SECTION]",
        help="a guide's name (shapes, sequence-state, variants, performance, ...), optionally with #section",
    )
    return parser


def _explain_arguments(explain: argparse.ArgumentParser) -> None:
    """The options of ``jaxlstm explain``: ``jl.explain``'s arguments."""
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
    explain.add_argument(
        "--cell",
        default="lstm",
        choices=CELLS,
        help="the recurrent cell: lstm (jl.LSTM) or gru (jl.GRU: gates r, z, n, carry h alone) (lstm)",
    )
    explain.add_argument("--layers", dest="num_layers", type=int, default=1, metavar="L", help="stacked layers (1)")
    explain.add_argument("--bidirectional", action="store_true", help="add a backward direction to every layer")
    explain.add_argument(
        "--merge",
        default="concat",
        choices=MERGE_MODES,
        help="how a bidirectional layer combines its two directions (concat)",
    )
    explain.add_argument(
        "--last-only",
        dest="return_sequences",
        action="store_false",
        help=(
            "return only each sequence's last step, (B, F), instead of every step, (B, T, F); F is the layer's "
            "output width: H, or 2H for --bidirectional with --merge concat (P and 2P with --proj-size P)"
        ),
    )
    explain.add_argument(
        "--proj-size",
        dest="proj_size",
        type=int,
        default=None,
        metavar="P",
        help="LSTM only: project h to P < H features (LSTMP, PyTorch's proj_size): h and the output get P, c keeps H",
    )
    explain.add_argument("--peepholes", action="store_true", help="LSTM only: peephole connections from c to the gates")
    explain.add_argument("--layer-norm", dest="layer_norm", action="store_true", help="LSTM only: layer-normalized")
    explain.add_argument("--cifg", action="store_true", help="LSTM only: coupled input-forget gate (f = 1 - i)")
    explain.add_argument(
        "--plot", metavar="FILE", help="also draw an LSTM unrolled over time to FILE (.png, .svg or .pdf)"
    )


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
    if args.command == "docs":
        return _docs(args.guide)
    return _explain(args)


def _explain(args: argparse.Namespace) -> int:
    """``jaxlstm explain``: the walk-through, and the diagram with ``--plot``."""
    from .explain import explain

    prog = "jaxlstm explain"
    try:
        explanation = explain(
            args.batch,
            args.time,
            args.input_size,
            args.units,
            cell=args.cell,
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
        print(f"{prog}: error: {_flags(str(error))}", file=sys.stderr)
        return 2
    if args.plot is not None and explanation.is_gru:
        print(f"{prog}: error: --plot draws LSTM cells only, got --cell gru; leave --plot out", file=sys.stderr)
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


# ``explain``'s argument names as ``jaxlstm explain`` spells them: anywhere in a message for these names, which
# are not English words (but not in "PyTorch's proj_size"); the plain words ("batch must ...") only where the
# message starts with them.
_FLAG_NAMES = {
    "input_size": "--input",
    "num_layers": "--layers",
    "proj_size": "--proj-size",
    "layer_norm": "--layer-norm",
    "peepholes": "--peepholes",
    "cifg": "--cifg",
}


def _flags(message: str) -> str:
    """An error of ``jl.explain`` in the command line's words: ``proj_size`` → ``--proj-size``,
    ``cell='gru'`` → ``--cell gru``, ``cell is`` → ``--cell is``, a leading ``units must`` → ``--units must``."""
    for name, flag in _FLAG_NAMES.items():
        message = re.sub(rf"(?<![\w-])(?<!PyTorch's ){name}\b", flag, message)
    message = re.sub(r"(?<![\w-])cell='(\w+)'", r"--cell \1", message)
    message = re.sub(r"(?<![\w-])cell is\b", "--cell is", message)
    for name in ("batch", "time", "units", "cell"):
        if message.startswith(f"{name} must"):
            message = "--" + message
    return message


# ----------------------------------------------------------------------------- jaxlstm docs


def _guides_folder():
    """Where the guides are: ``jaxlstm/guides/`` in an installed package (its package data, mapped from
    ``docs/`` at build time), else the ``docs/`` folder of the source checkout this package runs from."""
    try:
        folder = importlib.resources.files("jaxlstm.guides")
    except ModuleNotFoundError:  # a source checkout, or an editable install made before the mapping existed
        folder = None
    if folder is not None and folder.joinpath("shapes.md").is_file():
        return folder
    return Path(__file__).resolve().parent.parent / "docs"


# The guides first, in reading order; any other page after them, by name.
GUIDE_ORDER = ("shapes", "sequence-state", "variants", "performance", "gpu", "nnx")


def guides() -> dict[str, str]:
    """The guides, name (``shapes``) → Markdown text: the guides first, then the other pages by name."""
    folder = _guides_folder()
    entries = [entry for entry in (folder.iterdir() if folder.is_dir() else ()) if entry.name.endswith(".md")]
    texts = {entry.name[: -len(".md")]: entry.read_text(encoding="utf-8") for entry in entries if entry.is_file()}
    ordered = [name for name in GUIDE_ORDER if name in texts] + sorted(set(texts) - set(GUIDE_ORDER))
    return {name: texts[name] for name in ordered}


def _anchor(heading: str) -> str:
    """The anchor of a Markdown heading, as GitHub and the docs site make it (``Padding and seq_lengths`` →
    ``padding-and-seq_lengths``): lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(text: str) -> list[tuple[int, int, str]]:
    """``(line index, level, anchor)`` of every heading outside fenced code blocks."""
    found, fenced = [], False
    for index, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#{1,6}) (.+)", line)
        if match:
            found.append((index, len(match.group(1)), _anchor(match.group(2))))
    return found


def section(text: str, anchor: str) -> str | None:
    """The section of ``text`` under the heading whose anchor is ``anchor``, up to the next heading of the
    same or a higher level; ``None`` if no heading has that anchor."""
    lines, headings = text.splitlines(), _headings(text)
    for position, (start, level, name) in enumerate(headings):
        if name == anchor:
            end = next((index for index, deeper, _ in headings[position + 1 :] if deeper <= level), len(lines))
            return "\n".join(lines[start:end]).rstrip() + "\n"
    return None


def _docs(name: str | None) -> int:
    """``jaxlstm docs [GUIDE[#SECTION]]``: lists the guides, or prints one, or one of its sections."""
    prog = "jaxlstm docs"
    available = guides()
    if not available:
        print(f"{prog}: error: no guides found in {_guides_folder()}", file=sys.stderr)
        return 1
    if name is None:
        lines = ["jaxlstm's guides (print one with `jaxlstm docs NAME`, a section with `jaxlstm docs NAME#section`):"]
        for guide, text in available.items():
            title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# ")), "")
            lines.append(f"  {guide:<16} {title}")
        _print("\n".join(lines))
        return 0
    guide, _, anchor = name.removesuffix(".md").partition("#")
    guide = guide.removeprefix("docs/").removesuffix(".md")
    if guide not in available:
        print(f"{prog}: error: no guide {guide!r}; the guides are {', '.join(available)}", file=sys.stderr)
        return 2
    text = available[guide]
    if anchor:
        text = section(text, anchor)
        if text is None:
            sections = ", ".join(heading for _, _, heading in _headings(available[guide]))
            print(f"{prog}: error: {guide} has no section #{anchor}; its sections are {sections}", file=sys.stderr)
            return 2
    _print(text.rstrip("\n"))
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
