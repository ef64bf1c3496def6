"""``draw``: an LSTM configuration unrolled over time, as a picture (matplotlib).

One row of boxes per layer and direction: the boxes of a row are the SAME
cell drawn once per time step, joined by the h and c arrows that carry the
state from step to step. Inputs x_t enter from below, outputs h_t leave
upward; a bidirectional layer has a second row whose arrows point right to
left, and a merge node per step. Every arrow carries its shape with the real
numbers. For T > 6 the middle steps are elided with "…".

matplotlib is imported when ``draw`` runs (it is an optional dependency), and
only through its object API with the Agg canvas: no pyplot, no global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._text import format_count, format_shape

if TYPE_CHECKING:  # annotations only; the configuration's numbers, not explain (which imports this module)
    from .explain_shapes import Configuration

__all__ = ["draw", "shown_steps"]

MAX_STEPS_SHOWN = 6

# geometry, in inches (the axes map 1 data unit to 1 inch)
BOX_W, BOX_H = 1.1, 0.82
ELLIPSIS_W = 0.55
STEM = 0.95  # vertical input/output arrows
JUNCTION = 0.38  # bidirectional: from the input's fork to the forward box
ROW_GAP = 0.8  # bidirectional: between the forward and the backward row
MERGE_GAP = 0.6  # bidirectional: between the backward row and the merge node
MERGE_W, MERGE_H = 1.0, 0.36
ROUTE = 0.3  # how far outside a box the routed (crossing) lines run
HC = 0.17  # h arrow above, c arrow below the row's centre line
LABEL_W = 2.45  # row labels, left of everything
NOTE_LINE = 0.26  # the notes under the picture: one line each
TITLE_H = 1.0
FONT = 8.5

FORWARD = dict(face="#dcebf8", edge="#2b6cb0")
BACKWARD = dict(face="#fde8d3", edge="#c05621")
COLORS = dict(x="#1f5fa6", h="#d35400", c="#7d3c98", out="#1e8449", merge="#555555", text="#222222")


def shown_steps(time: int, max_shown: int = MAX_STEPS_SHOWN) -> list[int | None]:
    """The steps drawn: all of them up to ``max_shown``, else 0, 1, 2, None (…), T-1.

    >>> shown_steps(3), shown_steps(50)
    ([0, 1, 2], [0, 1, 2, None, 49])
    """
    if time <= max_shown:
        return list(range(time))
    return [0, 1, 2, None, time - 1]


@dataclass
class _Slot:
    step: int | None  # None: the "…" column
    cx: float

    @property
    def width(self) -> float:
        return BOX_W if self.step is not None else ELLIPSIS_W

    @property
    def left(self) -> float:
        return self.cx - self.width / 2

    @property
    def right(self) -> float:
        return self.cx + self.width / 2


def draw(e: Configuration, path=None, *, dpi: int = 110, max_steps_shown: int = MAX_STEPS_SHOWN):
    """Draws the configuration ``e`` (from ``jaxlstm.explain``) unrolled over time.

    Args:
        e: an ``Explanation`` (its ``explain_shapes.Configuration``).
        path: where to save it (``.png``, ``.svg``, ``.pdf``, any format
            matplotlib writes); ``None`` only returns the figure.
        dpi: resolution of raster formats.
        max_steps_shown: draw every step up to this many; longer sequences
            show steps 0, 1, 2, "…", T-1.

    Returns:
        the ``matplotlib.figure.Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = shown_steps(e.time, max_steps_shown)
    left_pad = extra_width = 0.0
    fig: Figure | None = None
    for _ in range(3):  # lay out, measure the text, widen where it spills over the edges
        d = _Drawing(e, steps, left_pad=left_pad, extra_width=extra_width)
        fig = Figure(figsize=(d.width, d.height), dpi=dpi)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, d.width)
        ax.set_ylim(0, d.height)
        ax.set_axis_off()
        d.render(ax)
        renderer = canvas.get_renderer()
        extents = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
        left = min(box.x0 for box in extents) / fig.dpi
        right = max(box.x1 for box in extents) / fig.dpi
        if left >= 0.15 and right <= d.width - 0.15:
            break
        left_pad += max(0.0, 0.25 - left)
        extra_width += max(0.0, right + 0.25 - d.width) + max(0.0, 0.25 - left)
    assert fig is not None  # the loop above runs at least once
    if path is not None:
        fig.savefig(path, dpi=dpi, facecolor="white")
    return fig


class _Drawing:
    """Lays out the rows and columns in inches, then draws them."""

    def __init__(self, e: Configuration, steps: list[int | None], *, left_pad: float = 0.0, extra_width: float = 0.0):
        self.e = e
        self.label_w = LABEL_W + left_pad
        b, h = e.batch, e.units
        longest = max(len(f"h = 0 {format_shape((b, h))}"), len(f"final c {format_shape((b, h))}"))
        self.gap = max(1.5, 0.072 * longest + 0.75)
        x = self.label_w + self.gap
        self.slots = []
        for step in steps:
            width = BOX_W if step is not None else ELLIPSIS_W
            self.slots.append(_Slot(step, x + width / 2))
            x += width + self.gap
        self.width = x + 0.35 + extra_width - left_pad

        # vertical layout, bottom to top
        bi = e.bidirectional
        self.notes_h = 0.4 + NOTE_LINE * len(self.notes())
        y = self.notes_h
        self.input_y = y  # where the input arrows start
        self.layers = []  # per layer: dict of y positions
        for layer in range(e.num_layers):
            top_layer = layer == e.num_layers - 1
            rows = {"src": y}
            if bi:
                rows["fork"] = y + STEM
                rows["fwd"] = rows["fork"] + JUNCTION
                rows["bwd"] = rows["fwd"] + BOX_H + ROW_GAP
                rows["merge"] = rows["bwd"] + BOX_H + MERGE_GAP + MERGE_H / 2
                y = rows["merge"] + MERGE_H / 2
            else:
                rows["fwd"] = y + STEM
                y = rows["fwd"] + BOX_H
            rows["top"] = y
            rows["last_only"] = top_layer and not e.return_sequences
            self.layers.append(rows)
        self.output_y = y + STEM  # where the output arrows end
        self.height = self.output_y + 0.3 + TITLE_H

    # ------------------------------------------------------------------ primitives

    def arrow(self, start, end, color, *, lw=1.5, halo=False):
        props = dict(arrowstyle="-|>", color=color, lw=lw, shrinkA=0, shrinkB=0, mutation_scale=12)
        artist = self.ax.annotate("", xy=end, xytext=start, arrowprops=props, zorder=3)
        if halo:
            from matplotlib import patheffects

            halo_effects = [patheffects.Stroke(linewidth=5, foreground="white"), patheffects.Normal()]
            artist.arrow_patch.set_path_effects(halo_effects)
        return artist

    def line(self, points, color, *, lw=1.5):
        """A polyline with a white halo, so it reads as passing over what it crosses."""
        from matplotlib import patheffects

        xs, ys = zip(*points, strict=True)
        (artist,) = self.ax.plot(xs, ys, color=color, lw=lw, solid_capstyle="butt", zorder=3)
        artist.set_path_effects([patheffects.Stroke(linewidth=5, foreground="white"), patheffects.Normal()])

    def text(self, x, y, s, *, size=FONT, color=COLORS["text"], ha="center", va="center", **kwargs):
        return self.ax.text(x, y, s, fontsize=size, color=color, ha=ha, va=va, zorder=5, **kwargs)

    def box(self, slot, y, style, lines):
        from matplotlib.patches import FancyBboxPatch

        patch = FancyBboxPatch(
            (slot.left, y),
            BOX_W,
            BOX_H,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=style["face"],
            edgecolor=style["edge"],
            lw=1.6,
            zorder=4,
        )
        self.ax.add_patch(patch)
        self.text(slot.cx, y + BOX_H * 0.66, lines[0], size=FONT + 0.5, weight="bold")
        self.text(slot.cx, y + BOX_H * 0.3, lines[1], size=FONT)

    def merge_node(self, cx, cy, label):
        from matplotlib.patches import FancyBboxPatch

        patch = FancyBboxPatch(
            (cx - MERGE_W / 2, cy - MERGE_H / 2),
            MERGE_W,
            MERGE_H,
            boxstyle="round,pad=0,rounding_size=0.15",
            facecolor="#f0f0f0",
            edgecolor=COLORS["merge"],
            lw=1.3,
            zorder=4,
        )
        self.ax.add_patch(patch)
        self.text(cx, cy, label, size=FONT, weight="bold")

    def vlabel(self, x, y0, y1, s, color, *, side="right"):
        """A label beside a vertical arrow from y0 to y1."""
        dx = 0.07 if side == "right" else -0.07
        self.text(x + dx, (y0 + y1) / 2, s, color=color, ha="left" if side == "right" else "right")

    def hc_arrows(self, x0, x1, row_y, left_to_right, h_label, c_label):
        """The h (upper) and c (lower) arrows from x0 to x1 across a row's gap, labelled."""
        cy = row_y + BOX_H / 2
        start, end = (x0, x1) if left_to_right else (x1, x0)
        self.arrow((start, cy + HC), (end, cy + HC), COLORS["h"])
        self.arrow((start, cy - HC), (end, cy - HC), COLORS["c"])
        mid = (x0 + x1) / 2
        self.text(mid, cy + HC + 0.05, h_label, color=COLORS["h"], va="bottom")
        self.text(mid, cy - HC - 0.05, c_label, color=COLORS["c"], va="top")

    # ------------------------------------------------------------------- the picture

    def render(self, ax):
        self.ax = ax
        for layer, rows in enumerate(self.layers):
            self.draw_layer(layer, rows)
        self.draw_io()
        self.draw_titles()

    def step_name(self, step, var):
        return f"${var}_{{{step}}}$"

    def draw_row(self, layer, y, backward):
        """One row: the same cell at every shown step, plus the h/c arrows between them."""
        e = self.e
        hs, cs = format_shape(e.h_shape), format_shape(e.c_shape)  # they differ under a projection
        style = BACKWARD if backward else FORWARD
        arrow_sign = "←" if backward else "→"
        for slot in self.slots:
            if slot.step is None:
                self.text(slot.cx, y + BOX_H / 2, "…", size=22, color=style["edge"])
            else:
                self.box(slot, y, style, ("LSTM cell", f"layer {layer} {arrow_sign}   t = {slot.step}"))
        for left, right in zip(self.slots, self.slots[1:], strict=False):
            self.hc_arrows(left.right, right.left, y, not backward, f"h {hs}", f"c {cs}")
        first, last = self.slots[0], self.slots[-1]
        start_x, end_x = first.left - self.gap + 0.12, last.right + self.gap - 0.12
        if backward:
            self.hc_arrows(last.right, end_x, y, False, f"h = 0 {hs}", f"c = 0 {cs}")
            self.hc_arrows(start_x, first.left, y, False, f"final h {hs}", f"final c {cs}")
        else:
            self.hc_arrows(start_x, first.left, y, True, f"h = 0 {hs}", f"c = 0 {cs}")
            self.hc_arrows(last.right, end_x, y, True, f"final h {hs}", f"final c {cs}")

        # row label: which cell, and its weights (the same at every step)
        cell = e.layers[layer].cells[1 if backward else 0]
        shapes = cell.param_shapes
        label_x = self.label_w - 0.2
        self.text(
            label_x,
            y + BOX_H - 0.02,
            f"layer {layer}, {cell.direction} {arrow_sign}",
            ha="right",
            va="top",
            size=FONT + 1,
            weight="bold",
            color=style["edge"],
        )
        lines = [f"one cell, {format_count(cell.num_params)} params:"]
        lines += [f"{name} {format_shape(shapes[name])}" for name in ("w_ih", "w_hh", "b")]
        extra = [name for name in shapes if name not in ("w_ih", "w_hh", "b") and not name.startswith("ln_")]
        layer_norm = sum(name.startswith("ln_") for name in shapes)
        extra += [f"{layer_norm} ln_*"] if layer_norm else []
        if extra:  # a variant's weights, by name (their shapes are in the text walk-through)
            lines.append("+ " + ", ".join(extra))
        weights = "\n".join(lines)
        self.text(label_x, y + BOX_H - 0.22, weights, ha="right", va="top", size=FONT - 0.5, linespacing=1.25)

    def input_label(self, layer, step):
        e = self.e
        if layer == 0:
            return f"{self.step_name(step, 'x')} {format_shape(e.step_input_shape)}"
        prev = "h" if not e.bidirectional else "y"
        return f"{self.step_name(step, prev)} {format_shape((e.batch, e.output_size))}"

    def draw_layer(self, layer, rows):
        e = self.e
        bi = e.bidirectional
        hshape = format_shape(e.step_output_shape)
        self.draw_row(layer, rows["fwd"], backward=False)
        if bi:
            self.draw_row(layer, rows["bwd"], backward=True)
        for slot in self.slots:
            if slot.step is None:
                level = rows["src"] + STEM / 2
                self.text(slot.cx, level, "…", size=18, color=COLORS["x"] if layer == 0 else COLORS["out"])
                if bi and not rows["last_only"]:
                    self.text(slot.cx, rows["merge"], "…", size=18, color=COLORS["merge"])
                continue
            cx = slot.cx
            color_in = COLORS["x"] if layer == 0 else COLORS["out"]
            if not bi:
                self.arrow((cx, rows["src"]), (cx, rows["fwd"]), color_in)
                self.vlabel(cx, rows["src"], rows["fwd"], self.input_label(layer, slot.step), color_in)
                continue
            # bidirectional: the input forks to both rows
            fork, fwd, bwd = rows["fork"], rows["fwd"], rows["bwd"]
            between = fwd + BOX_H + ROW_GAP / 2
            self.line([(cx, rows["src"]), (cx, fork)], color_in)
            self.vlabel(cx, rows["src"], fork, self.input_label(layer, slot.step), color_in)
            self.arrow((cx, fork), (cx, fwd), color_in)
            xl = slot.left - ROUTE
            self.line([(cx, fork), (xl, fork), (xl, between), (cx - 0.28, between)], color_in)
            self.arrow((cx - 0.28, between), (cx - 0.28, bwd), color_in)
            self.ax.plot([cx], [fork], "o", color=color_in, ms=4, zorder=6)
            if rows["last_only"]:
                continue
            # each direction's h_t goes to this step's merge node
            xr = slot.right + ROUTE
            merge = rows["merge"]
            self.line([(cx + 0.28, fwd + BOX_H), (cx + 0.28, between), (xr, between), (xr, merge)], COLORS["h"])
            self.arrow((xr, merge), (cx + MERGE_W / 2, merge), COLORS["h"])
            self.vlabel(xr, bwd + BOX_H, merge, f"→ {self.step_name(slot.step, 'h')} {hshape}", COLORS["h"])
            self.arrow((cx, bwd + BOX_H), (cx, merge - MERGE_H / 2), COLORS["h"])
            self.vlabel(
                cx,
                bwd + BOX_H,
                merge - MERGE_H / 2,
                f"← {self.step_name(slot.step, 'h')} {hshape}",
                COLORS["h"],
                side="left",
            )
            self.merge_node(cx, merge, e.merge)
        if bi:
            label_x = self.label_w - 0.2
            if not rows["last_only"]:
                how = {"concat": "[→h, ←h]", "sum": "→h + ←h", "mul": "→h · ←h", "ave": "(→h + ←h) / 2"}[e.merge]
                self.text(
                    label_x,
                    rows["merge"],
                    f"merge={e.merge!r}\n{how}: {e.output_size_symbol} = {e.output_size}",
                    ha="right",
                    size=FONT,
                    color=COLORS["merge"],
                    weight="bold",
                )
            else:
                self.draw_last_only_merge(rows)

    def draw_last_only_merge(self, rows):
        """Bidirectional, last step only: forward h after step T-1 merged with backward h after step 0."""
        e = self.e
        hshape = format_shape(e.step_output_shape)
        first = next(s for s in self.slots if s.step is not None)
        last = self.slots[-1]
        fwd, bwd, merge = rows["fwd"], rows["bwd"], rows["merge"]
        between = fwd + BOX_H + ROW_GAP / 2
        cx = (first.cx + last.cx) / 2
        xr = last.right + ROUTE
        self.line([(last.cx + 0.28, fwd + BOX_H), (last.cx + 0.28, between), (xr, between), (xr, merge)], COLORS["h"])
        self.arrow((xr, merge), (cx + MERGE_W / 2, merge), COLORS["h"])
        self.vlabel(xr, bwd + BOX_H, merge, f"→ h after step {e.time - 1} {hshape}", COLORS["h"])
        self.line([(first.cx, bwd + BOX_H), (first.cx, merge)], COLORS["h"])
        self.arrow((first.cx, merge), (cx - MERGE_W / 2, merge), COLORS["h"])
        self.vlabel(first.cx, bwd + BOX_H, merge, f"← h after step 0 {hshape}", COLORS["h"], side="left")
        self.merge_node(cx, merge, e.merge)
        self.text(
            self.label_w - 0.2,
            merge,
            f"merge={e.merge!r}\nlast step only",
            ha="right",
            size=FONT,
            color=COLORS["merge"],
            weight="bold",
        )

    def draw_io(self):
        """The model's input label (left) and its outputs (top)."""
        e = self.e
        label_x = self.label_w - 0.2
        self.text(
            label_x,
            self.input_y + STEM / 2,
            f"input x\n(B, T, D) = {format_shape(e.input_shape)}",
            ha="right",
            size=FONT + 0.5,
            color=COLORS["x"],
            weight="bold",
        )
        top = self.layers[-1]["top"]
        out_y = self.output_y
        f = e.output_size
        step_shape = format_shape((e.batch, f))
        name = "y" if e.bidirectional else "h"
        if e.return_sequences:
            for slot in self.slots:
                if slot.step is None:
                    self.text(slot.cx, (top + out_y) / 2, "…", size=18, color=COLORS["out"])
                    continue
                self.arrow((slot.cx, top), (slot.cx, out_y), COLORS["out"])
                self.vlabel(slot.cx, top, out_y, f"{self.step_name(slot.step, name)} {step_shape}", COLORS["out"])
            words = f"output, every step:\n(B, T, {e.output_size_symbol}) = {format_shape(e.output_shape)}"
        else:
            if e.bidirectional:
                first = next(s for s in self.slots if s.step is not None)
                cx = (first.cx + self.slots[-1].cx) / 2
                start = self.layers[-1]["merge"] + MERGE_H / 2
                label = f"output {step_shape}"
            else:
                cx, start = self.slots[-1].cx, top
                label = f"output = {self.step_name(e.time - 1, 'h')} {step_shape}"
            self.arrow((cx, start), (cx, out_y), COLORS["out"])
            self.vlabel(cx, start, out_y, label, COLORS["out"])
            words = f"output, last step only:\n(B, {e.output_size_symbol}) = {format_shape(e.output_shape)}"
        self.text(label_x, (top + out_y) / 2, words, ha="right", size=FONT + 0.5, color=COLORS["out"], weight="bold")

    def draw_titles(self):
        e = self.e
        top = self.height
        self.text(
            0.3,
            top - 0.32,
            "one cell, applied T times; units = H = size of the state vector",
            ha="left",
            size=15,
            weight="bold",
        )
        cells = "1 cell" if len(e.cells) == 1 else f"{len(e.cells)} cells (one per layer and direction)"
        projected = "" if e.proj_size is None else f" (c_t), h_t projected to P = {e.proj_size}"
        self.text(
            0.3,
            top - 0.7,
            f"T = {e.time} step{'s' if e.time != 1 else ''}, H = {e.units} units{projected}: at every step "
            f"{'the' if len(e.cells) == 1 else 'each'} cell turns x_t into ONE {e.recurrent_size}-vector h_t "
            f"per sequence; nothing is combined.   {cells}, {format_count(e.total_params)} parameters in all.",
            ha="left",
            size=10.5,
        )
        for i, note in enumerate(self.notes()):
            self.text(0.3, self.notes_h - 0.3 - NOTE_LINE * i, note, ha="left", size=FONT + 0.5)

    def notes(self) -> list[str]:
        """The explanatory lines under the picture."""
        e = self.e
        dense = format_shape(e.output_shape)
        sizes = f"H = units = {e.units}" + ("" if e.proj_size is None else f",  P = proj_size = {e.proj_size}")
        notes = [
            "Boxes in one row are the SAME cell (same weights) drawn once per time step; "
            "the h and c arrows carry its state to the next step"
            + ("; backward rows read the sequence from T-1 down to 0." if e.bidirectional else "."),
            f"{e.module_call}:  B = batch = {e.batch},  T = time = {e.time},  D = input size = {e.input_size},  "
            f"{sizes}.   A following Dense layer receives {dense}.",
        ]
        if e.bidirectional and (e.return_sequences or e.num_layers > 1):  # y_t is drawn
            notes.append(
                f"y_t = the forward and backward h_t merged ({e.merge}): (B, {e.output_size_symbol}) = "
                f"{format_shape((e.batch, e.output_size))}, what the next layer (or the output) gets at step t."
            )
        if len(self.slots) < e.time:
            notes.append(f'"…" stands for steps 3 to {e.time - 2}: the same cell, the same arrows.')
        return notes
