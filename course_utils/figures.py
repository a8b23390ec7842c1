"""The course's diagrams, drawn by code so that they display offline and can be regenerated.

Every diagram a lesson needs (a convolution's stride and padding, the receptive field, the U-Net,
upsampling, attention, ViT patching, SimCLR, BYOL, MAE, early vs late fusion, L-TAE) is one small
function that draws with matplotlib patches and arrows on a canvas measured in inches. Nothing is
random and nothing depends on the clock, so the PNG files are the same on every run with the same
matplotlib. Colours come from the Okabe-Ito palette, which readers with colour-vision deficiencies
can tell apart.

    python -m course_utils.figures [--out figures] [NAME ...]   # write figures/<name>.png

In a notebook, ``show_figure("unet")`` shows ``figures/unet.png`` from the repository, or draws the
diagram on the spot when the file is missing (a notebook opened alone on Colab).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from course_utils.config import repo_root
from course_utils.files import atomic_path

#: Okabe-Ito colours (colour-blind safe), by role.
BLUE, ORANGE, GREEN, SKY, VERMILLION, PURPLE, YELLOW, GREY = (
    "#0072B2", "#E69F00", "#009E73", "#56B4E9", "#D55E00", "#CC79A7", "#F0E442", "#999999",
)
DPI = 100
FONT = 10


# --- drawing primitives -------------------------------------------------------------------------------------------


def _canvas(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure whose data coordinates are inches, origin bottom left, no axes drawn.

    The figure is made without pyplot, so drawing it neither opens a window nor shows it inline.
    """
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def _box(ax: Axes, x: float, y: float, text: str, colour: str = SKY, w: float = 1.5, h: float = 0.6,
         size: int = FONT) -> tuple[float, float, float, float]:
    """A rounded, labelled box centred on (x, y); returns its (left, right, bottom, top)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=colour, edgecolor="black", alpha=0.9, linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], text: str = "", colour: str = "black",
           dashed: bool = False, size: int = FONT - 1) -> None:
    """An arrow from ``start`` to ``end`` with an optional label beside its middle."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=colour, linewidth=1.3,
                                 linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", va="bottom",
                fontsize=size, color=colour)


def _grid(ax: Axes, x: float, y: float, values: np.ndarray, cell: float = 0.3, colours: np.ndarray | None = None,
          labels: bool = True, fmt: str = "{:g}") -> None:
    """A grid of cells with its top-left corner at (x, y); ``colours`` gives each cell's fill (default white)."""
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            fill = "white" if colours is None else colours[i, j]
            ax.add_patch(Rectangle((x + j * cell, y - (i + 1) * cell), cell, cell, facecolor=fill,
                                   edgecolor="black", linewidth=0.6))
            if labels:
                ax.text(x + (j + 0.5) * cell, y - (i + 0.5) * cell, fmt.format(values[i, j]), ha="center",
                        va="center", fontsize=FONT - 2)


def _title(ax: Axes, x: float, y: float, text: str, size: int = FONT + 1) -> None:
    ax.text(x, y, text, ha="center", va="center", fontsize=size, fontweight="bold")


# --- convolutional networks (notebook 02) --------------------------------------------------------------------------


def conv_stride_padding() -> Figure:
    """A 3x3 kernel on a 5x5 input: no padding, padding 1, and padding 1 with stride 2, with the output sizes."""
    settings = [(0, 1), (1, 1), (1, 2)]  # (padding, stride)
    fig, ax = _canvas(13, 4.2)
    cell = 0.28
    for panel, (padding, stride) in enumerate(settings):
        left = 0.3 + panel * 4.4
        side = 5 + 2 * padding
        out = (5 + 2 * padding - 3) // stride + 1
        colours = np.full((side, side), "white", dtype=object)
        colours[:padding, :] = colours[-padding or side:, :] = "#e0e0e0"
        colours[:, :padding] = colours[:, -padding or side:] = "#e0e0e0"
        colours[:3, :3] = SKY  # the kernel's first position
        colours[:3, stride:stride + 3] = np.where(colours[:3, stride:stride + 3] == SKY, BLUE, ORANGE)
        _grid(ax, left, 3.3, np.zeros((side, side)), cell, colours, labels=False)
        out_colours = np.full((out, out), "white", dtype=object)
        out_colours[0, 0], out_colours[0, 1] = SKY, ORANGE
        _grid(ax, left + side * cell + 0.5, 3.3 - (side - out) * cell / 2, np.zeros((out, out)), cell, out_colours,
              labels=False)
        _title(ax, left + 1.6, 3.8, f"k = 3, padding {padding}, stride {stride}")
        ax.text(left + 1.6, 0.75, f"input 5 x 5 -> output {out} x {out}\n"
                f"$\\lfloor (5 + 2 \\cdot {padding} - 3) / {stride} \\rfloor + 1 = {out}$",
                ha="center", va="center", fontsize=FONT)
    ax.text(6.5, 0.2, "blue: the kernel's first position, orange: the next one (overlap dark blue);"
            " grey: zero padding", ha="center", fontsize=FONT - 1)
    return fig


def receptive_field() -> Figure:
    """The receptive field of one output unit through conv 3, conv 3, pool 2 (stride 2), conv 3, in one dimension."""
    layers = [(3, 1, "conv 3"), (3, 1, "conv 3"), (2, 2, "pool 2, stride 2"), (3, 1, "conv 3")]
    fig, ax = _canvas(11, 5.0)
    spacing, x0 = 0.55, 1.8
    centres = [np.arange(16) * spacing + x0]  # input positions
    jump, size, sizes = 1, 1, [1]
    for kernel, stride, _ in layers:  # a node sits at the centre of the nodes it reads
        previous = centres[-1]
        count = (len(previous) - kernel) // stride + 1
        centres.append(np.array([previous[stride * i: stride * i + kernel].mean() for i in range(count)]))
        size += (kernel - 1) * jump
        jump *= stride
        sizes.append(size)
    cone = {len(layers): {1}}  # one output unit, then every unit it reads, layer by layer
    for level in range(len(layers), 0, -1):
        kernel, stride, _ = layers[level - 1]
        cone[level - 1] = {stride * i + j for i in cone[level] for j in range(kernel)}
    for level, xs in enumerate(centres):
        y = 0.6 + level * 0.9
        if level > 0:
            kernel, stride, name = layers[level - 1]
            for i, x in enumerate(xs):
                for j in range(kernel):
                    inside = i in cone[level] and stride * i + j in cone[level - 1]
                    ax.plot([x, centres[level - 1][stride * i + j]], [y, y - 0.9], color=ORANGE if inside else GREY,
                            linewidth=1.6 if inside else 0.5, zorder=1)
            ax.text(0.15, y, name, va="center", fontsize=FONT)
        else:
            ax.text(0.15, y, "input", va="center", fontsize=FONT)
        for i, x in enumerate(xs):
            ax.scatter(x, y, s=90, color=ORANGE if i in cone[level] else "white", edgecolor="black", zorder=2)
        ax.text(10.9, y, f"r = {sizes[level]}", ha="right", va="center", fontsize=FONT)
    ax.text(5.5, 4.7, "$r_L = 1 + \\sum_l d_l (k_l - 1) \\prod_{i<l} s_i$: every stride multiplies what later "
            "layers add", ha="center", fontsize=FONT + 1)
    return fig


def unet() -> Figure:
    """A three-level U-Net: encoder blocks and pooling, bottleneck, transpose convolutions, skip concatenations."""
    fig, ax = _canvas(12, 6.0)
    levels = [(128, 16), (64, 32), (32, 64)]  # (side in pixels, channels) of the encoder's levels
    ys = [4.6, 3.4, 2.2]
    for (side, channels), y in zip(levels, ys, strict=True):
        _box(ax, 1.6 + (4.6 - y) * 0.9, y, f"conv block\n{side}x{side}, {channels} ch", SKY, w=1.7, h=0.75)
        _box(ax, 10.4 - (4.6 - y) * 0.9, y, f"conv block\n{side}x{side}, {channels} ch", GREEN, w=1.7, h=0.75)
        _arrow(ax, (2.45 + (4.6 - y) * 0.9, y), (9.55 - (4.6 - y) * 0.9, y), "skip: copy and concatenate", GREY,
               dashed=True)
    _box(ax, 6.0, 1.0, "bottleneck\n16x16, 128 ch", PURPLE, w=1.9, h=0.75)
    for y_high, y_low in zip(ys, [*ys[1:], 1.0], strict=True):
        x_enc, x_dec = 1.6 + (4.6 - y_high) * 0.9, 10.4 - (4.6 - y_high) * 0.9
        low_enc = 1.6 + (4.6 - y_low) * 0.9 if y_low > 1.0 else 5.05
        low_dec = 10.4 - (4.6 - y_low) * 0.9 if y_low > 1.0 else 6.95
        _arrow(ax, (x_enc, y_high - 0.38), (low_enc, y_low + 0.38), colour=VERMILLION)
        _arrow(ax, (low_dec, y_low + 0.38), (x_dec, y_high - 0.38), colour=BLUE)
    _box(ax, 10.4, 5.6, "1x1 conv -> 3 classes", ORANGE, w=2.0, h=0.45, size=FONT - 1)
    _arrow(ax, (10.4, 4.98), (10.4, 5.37))
    _box(ax, 1.6, 5.6, "input: 4 bands, 128x128", "white", w=2.0, h=0.45, size=FONT - 1)
    _arrow(ax, (1.6, 5.37), (1.6, 4.98))
    legend = [(VERMILLION, "max pool 2x2: half the side"), (BLUE, "transpose conv 2x2, stride 2: double the side"),
              (GREY, "skip connection (concatenate channels)")]
    for i, (colour, text) in enumerate(legend):
        ax.plot([8.0, 8.5], [1.3 - 0.35 * i] * 2, color=colour, linewidth=2, linestyle="--" if colour == GREY else "-")
        ax.text(8.6, 1.3 - 0.35 * i, text, va="center", fontsize=FONT - 1)
    ax.text(0.2, 0.25, "conv block = (3x3 conv, batch norm, ReLU) x 2;  encoder: context grows, detail shrinks; "
            "skips bring the detail back", fontsize=FONT - 1)
    return fig


def _bilinear_2x(values: np.ndarray) -> np.ndarray:
    """Upsample a small array by two like ``F.interpolate(mode="bilinear", align_corners=False)``."""
    n = values.shape[0]
    source = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
    rows = np.array([np.interp(source, np.arange(n), row) for row in values])
    return np.array([np.interp(source, np.arange(n), col) for col in rows.T]).T


def upsampling() -> Figure:
    """A 2x2 input brought to 4x4 by nearest, bilinear, transpose convolution, max-unpooling and pixel shuffle."""
    fig, ax = _canvas(13, 3.9)
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    kernel = np.array([[1.0, 0.5], [0.5, 0.25]])
    unpooled = np.zeros((4, 4))
    for (i, j), (di, dj) in zip(np.ndindex(2, 2), [(0, 1), (1, 1), (0, 0), (1, 0)], strict=True):
        unpooled[2 * i + di, 2 * j + dj] = values[i, j]  # where max pooling found each maximum
    phase_colours = np.array([[SKY, ORANGE], [GREEN, PURPLE]], dtype=object)
    panels = [
        ("nearest", np.kron(values, np.ones((2, 2))), None),
        ("bilinear", _bilinear_2x(values), None),
        ("transpose conv\n(kernel [[1, .5], [.5, .25]])", np.kron(values, kernel), None),
        ("max-unpooling\n(switches from the pooling)", unpooled, None),
        ("pixel shuffle\n(4 channels of 2x2)", np.tile(np.arange(1, 5).reshape(2, 2), (2, 2)),
         np.tile(phase_colours, (2, 2))),
    ]
    _grid(ax, 0.3, 2.6, values, 0.4)
    _title(ax, 0.7, 3.3, "input 2x2")
    for i, (name, result, colours) in enumerate(panels):
        left = 1.9 + i * 2.2
        _grid(ax, left, 2.9, result, 0.4, colours, fmt="{:.3g}")
        _title(ax, left + 0.8, 3.5, name, size=FONT)
    ax.text(0.2, 0.45, "Nearest and bilinear are fixed rules; a transpose convolution stamps a learned kernel "
            "scaled by each input value; max-unpooling puts values back where the maxima were;\npixel shuffle "
            "rearranges 4 channels (colours: channel 1-4) into a 2x2 block per input pixel.", fontsize=FONT - 1)
    return fig


# --- attention and transformers (notebook 03) ----------------------------------------------------------------------


def attention() -> Figure:
    """Scaled dot-product attention for one query: scores, softmax weights, weighted sum of the values."""
    fig, ax = _canvas(11, 4.4)
    scores = np.array([2.0, 0.4, -1.0, 1.1])
    weights = np.exp(scores) / np.exp(scores).sum()
    names = ["cropland", "forest", "water", "road"]
    _box(ax, 1.0, 3.6, "query $q$", ORANGE, w=1.3)
    for i, (name, weight) in enumerate(zip(names, weights, strict=True)):
        y = 2.7 - i * 0.6
        _box(ax, 1.0, y, f"key $k_{i + 1}$: {name}", SKY, w=1.7, h=0.45, size=FONT - 1)
        _arrow(ax, (1.9, y), (3.4, y), f"$q \\cdot k_{i + 1} / \\sqrt{{d}}$ = {scores[i]:+.1f}", size=FONT - 2)
        ax.add_patch(Rectangle((3.5, y - 0.18), 2.4 * weight, 0.36, facecolor=ORANGE, edgecolor="black"))
        ax.text(3.6 + 2.4 * weight, y, f"{weight:.2f}", va="center", fontsize=FONT - 1)
        _box(ax, 7.2, y, f"$w_{i + 1} v_{i + 1}$", GREEN, w=0.5 + 1.6 * weight, h=0.45, size=FONT - 1)
        _arrow(ax, (8.1, y), (9.0, 1.8), colour=GREY)
    _title(ax, 4.6, 3.2, "softmax weights $w_i$")
    _title(ax, 7.2, 3.2, "values, weighted")
    _box(ax, 9.8, 1.8, "output\n$\\sum_i w_i v_i$", PURPLE, w=1.4, h=0.8)
    ax.text(5.5, 0.3, "Attention$(Q, K, V) = \\mathrm{softmax}(Q K^\\top / \\sqrt{d})\\, V$: "
            "a weighted average, the weights from how well each key matches the query", ha="center",
            fontsize=FONT + 1)
    return fig


def vit_patching() -> Figure:
    """A ViT: the image cut into patches, each flattened and projected to a token, plus a class token and positions."""
    fig, ax = _canvas(12, 4.4)
    rows, cols = np.mgrid[0:64, 0:64]
    image = np.stack([0.5 + 0.4 * np.sin(rows / 9.0), 0.5 + 0.4 * np.cos(cols / 11.0),
                      0.5 + 0.3 * np.sin((rows + cols) / 15.0)], axis=-1)
    ax.imshow(image, extent=(0.3, 2.7, 1.0, 3.4), interpolation="nearest")
    for k in range(5):  # a 4x4 grid of patches
        ax.plot([0.3 + 0.6 * k] * 2, [1.0, 3.4], color="white", linewidth=2)
        ax.plot([0.3, 2.7], [1.0 + 0.6 * k] * 2, color="white", linewidth=2)
    _title(ax, 1.5, 3.8, "image cut into 4x4 patches")
    _arrow(ax, (2.9, 2.2), (3.6, 2.2), "flatten,\nlinear", size=FONT - 1)
    for i in range(9):  # the class token and the first patch tokens
        x = 3.9 + i * 0.42
        colour = ORANGE if i == 0 else SKY
        ax.add_patch(Rectangle((x, 1.7), 0.32, 1.0, facecolor=colour, edgecolor="black"))
        ax.text(x + 0.16, 1.45, "cls" if i == 0 else str(i), ha="center", fontsize=FONT - 2)
        ax.add_patch(Rectangle((x, 3.0), 0.32, 0.3, facecolor=YELLOW, edgecolor="black"))
        ax.text(x + 0.16, 2.85, "+", ha="center", va="center", fontsize=FONT)
    ax.text(7.75, 2.2, "...", fontsize=FONT + 4, va="center")
    ax.text(5.8, 3.5, "learned position embeddings", ha="center", fontsize=FONT - 1)
    ax.text(5.8, 1.05, "tokens: a class token + one per patch", ha="center", fontsize=FONT - 1)
    _arrow(ax, (8.2, 2.2), (8.7, 2.2))
    _box(ax, 9.6, 2.2, "transformer\nencoder\n(L blocks)", PURPLE, w=1.6, h=1.2)
    _arrow(ax, (10.4, 2.2), (10.8, 2.2))
    _box(ax, 11.4, 2.2, "MLP head\non cls\n-> class", GREEN, w=1.1, h=1.0, size=FONT - 1)
    ax.text(6, 0.3, "A patch of p x p pixels and C bands becomes one token of dimension D; the number of tokens "
            "is (H / p) (W / p).", ha="center", fontsize=FONT)
    return fig


# --- self-supervised learning (notebook 04) ------------------------------------------------------------------------


def _two_branches(ax: Axes, stages: Sequence[Sequence[tuple[str, str]]], ys: Sequence[float], x0: float = 2.6,
                  step: float = 1.85) -> float:
    """Rows of boxes joined by arrows, one row per branch; returns the x just right of the longest row."""
    right = x0
    for stage_row, y in zip(stages, ys, strict=True):
        for i, (text, colour) in enumerate(stage_row):
            x = x0 + i * step
            _box(ax, x, y, text, colour, w=1.45, h=0.7, size=FONT - 1)
            if i:
                _arrow(ax, (x - step + 0.73, y), (x - 0.73, y))
            right = max(right, x + 0.73)
    return right


def _image_source(ax: Axes, ys: Sequence[float], labels: Sequence[str]) -> None:
    """An image box on the left with arrows to each branch."""
    _box(ax, 0.7, sum(ys) / len(ys), "image $x$", "white", w=1.0)
    for y, label in zip(ys, labels, strict=True):
        _arrow(ax, (1.2, sum(ys) / len(ys)), (1.87, y), label, size=FONT - 2)


def simclr() -> Figure:
    """SimCLR: two augmented views, a shared encoder and projector, and the NT-Xent loss over the batch."""
    fig, ax = _canvas(11, 4.0)
    ys = (3.0, 1.4)
    _image_source(ax, ys, ["$t$", "$t'$"])
    row = [("view", YELLOW), ("encoder $f$\n(shared)", SKY), ("projector $g$\n(shared)", GREEN), ("$z$", "white")]
    right = _two_branches(ax, [row, row], ys)
    _box(ax, right + 1.0, 2.2, "NT-Xent:\npull $z_i, z_j$\ntogether,\npush others\naway", ORANGE, w=1.5, h=1.6,
         size=FONT - 1)
    for y in ys:
        _arrow(ax, (right, y), (right + 0.25, 2.2))
    ax.text(5.5, 0.35, "negatives: the views of the other images in the batch; after pretraining, $g$ is dropped "
            "and $h = f(x)$ is the representation", ha="center", fontsize=FONT - 1)
    return fig


def byol() -> Figure:
    """BYOL: an online network with a predictor learns to predict a slowly moving (EMA) target network."""
    fig, ax = _canvas(11.5, 4.2)
    ys = (3.1, 1.4)
    _image_source(ax, ys, ["$t$", "$t'$"])
    online = [("view", YELLOW), ("encoder $f_\\theta$", SKY), ("projector $g_\\theta$", GREEN),
              ("predictor $q_\\theta$", PURPLE)]
    target = [("view", YELLOW), ("encoder $f_\\xi$", "#d0d0d0"), ("projector $g_\\xi$", "#d0d0d0")]
    right = _two_branches(ax, [online, target], ys)
    _box(ax, right + 1.0, 2.25, "loss:\n$\\|\\bar q - \\bar z'\\|^2$", ORANGE, w=1.4, h=1.0, size=FONT - 1)
    _arrow(ax, (right, ys[0]), (right + 0.3, 2.5))
    _arrow(ax, (right - 1.85, ys[1]), (right + 0.3, 2.0), "stop-gradient", VERMILLION, dashed=True, size=FONT - 2)
    _arrow(ax, (4.45, 2.7), (4.45, 1.8), colour=BLUE, dashed=True)
    ax.text(4.6, 2.25, "EMA: $\\xi \\leftarrow \\tau \\xi + (1 - \\tau) \\theta$", fontsize=FONT - 1, color=BLUE,
            va="center")
    ax.text(5.75, 0.35, "No negatives: the predictor, the stop-gradient and the slow target keep the two networks "
            "from collapsing to a constant", ha="center", fontsize=FONT - 1)
    return fig


def mae() -> Figure:
    """MAE: mask most patches, encode only the visible ones, decode with mask tokens, reconstruct the hidden pixels."""
    fig, ax = _canvas(12, 4.0)
    visible = {1, 6, 11, 12}  # 4 of 16 patches kept (75 % masked)
    colours = np.array([SKY if i in visible else "#d0d0d0" for i in range(16)], dtype=object).reshape(4, 4)
    _grid(ax, 0.3, 3.2, np.zeros((4, 4)), 0.5, colours, labels=False)
    _title(ax, 1.3, 3.5, "patches, 75 % masked")
    _arrow(ax, (2.45, 2.2), (3.0, 2.2), "visible\nonly", size=FONT - 2)
    for i in range(len(visible)):
        ax.add_patch(Rectangle((3.15 + i * 0.3, 1.8), 0.24, 0.8, facecolor=SKY, edgecolor="black"))
    _box(ax, 5.2, 2.2, "encoder\n(ViT)", PURPLE, w=1.2, h=1.0)
    _arrow(ax, (4.35, 2.2), (4.6, 2.2))
    _arrow(ax, (5.8, 2.2), (6.3, 2.2), "+ mask\ntokens", size=FONT - 2)
    for i in range(16):
        ax.add_patch(Rectangle((6.4 + i * 0.12, 1.8), 0.1, 0.8, facecolor=PURPLE if i in visible else "#d0d0d0",
                               edgecolor="black", linewidth=0.5))
    _box(ax, 9.0, 2.2, "small\ndecoder", GREEN, w=1.1, h=1.0)
    _arrow(ax, (8.35, 2.2), (8.45, 2.2))
    _arrow(ax, (9.55, 2.2), (9.95, 2.2))
    recon = np.array([GREEN if i not in visible else "white" for i in range(16)], dtype=object).reshape(4, 4)
    _grid(ax, 10.0, 3.2, np.zeros((4, 4)), 0.45, recon, labels=False)
    _title(ax, 10.9, 3.5, "reconstruction")
    ax.text(6, 0.45, "Loss: mean squared error on the masked patches only. The encoder sees a quarter of the "
            "tokens, so pretraining is cheap;\nafterwards the decoder is dropped and the encoder is fine-tuned "
            "or probed.", ha="center", fontsize=FONT - 1)
    return fig


# --- fusion (notebook 05) and time series (notebook 06) ------------------------------------------------------------


def fusion_early_late() -> Figure:
    """Early fusion stacks the modalities as input channels; late fusion encodes each and joins the features."""
    fig, ax = _canvas(12, 4.6)
    inputs = [("Sentinel-2\n12 bands", SKY), ("Sentinel-1\nVV, VH", ORANGE), ("DEM + scalars\n(broadcast)", YELLOW)]
    ys = (3.4, 2.3, 1.2)
    _title(ax, 2.9, 4.3, "early fusion")
    for (text, colour), y in zip(inputs, ys, strict=True):
        _box(ax, 0.85, y, text, colour, w=1.4, h=0.75, size=FONT - 1)
        _arrow(ax, (1.55, y), (2.3, 2.3))
    _box(ax, 2.9, 2.3, "stack\nchannels", "white", w=1.0, h=0.8, size=FONT - 1)
    _box(ax, 4.4, 2.3, "one\nbackbone", PURPLE, w=1.2, h=0.9)
    _arrow(ax, (3.4, 2.3), (3.8, 2.3))
    _box(ax, 5.5, 2.3, "head", GREEN, w=0.7, h=0.6, size=FONT - 1)
    _arrow(ax, (5.0, 2.3), (5.15, 2.3))
    ax.plot([6.2, 6.2], [0.6, 4.4], color=GREY, linewidth=1)
    _title(ax, 9.2, 4.3, "late fusion")
    for (text, colour), y in zip(inputs, ys, strict=True):
        _box(ax, 7.2, y, text, colour, w=1.4, h=0.75, size=FONT - 1)
        _box(ax, 8.95, y, "backbone", PURPLE, w=1.2, h=0.6, size=FONT - 1)
        _arrow(ax, (7.9, y), (8.35, y))
        _arrow(ax, (9.55, y), (10.1, 2.3))
    _box(ax, 10.5, 2.3, "concat\nfeatures", "white", w=0.8, h=0.8, size=FONT - 1)
    _box(ax, 11.5, 2.3, "head", GREEN, w=0.7, h=0.6, size=FONT - 1)
    _arrow(ax, (10.9, 2.3), (11.15, 2.3))
    ax.text(6, 0.25, "Early: one network sees every pixel's modalities together (cheap, needs co-registered inputs). "
            "Late: one encoder per modality; a missing modality can be dropped.", ha="center", fontsize=FONT - 1)
    return fig


def ltae() -> Figure:
    """L-TAE: one learned master query per head attends over the dates; no T x T attention matrix is formed."""
    fig, ax = _canvas(12, 5.0)
    dates = np.array([5, 30, 62, 95, 120, 140, 171, 200, 236, 270])
    weights = np.exp(-((dates - 150) / 45.0) ** 2)
    weights /= weights.sum()
    for i, day in enumerate(dates):
        x = 0.4 + i * 0.42
        ax.add_patch(Rectangle((x, 2.0), 0.32, 1.2, facecolor=SKY, edgecolor="black"))
        ax.text(x + 0.16, 1.75, str(day), ha="center", fontsize=FONT - 3)
        ax.add_patch(Rectangle((x, 3.5), 0.32, 0.9 * weights[i] / weights.max(), facecolor=ORANGE,
                               edgecolor="black"))
    ax.text(2.5, 1.4, "observations (bands at irregular dates; day of year below)", ha="center", fontsize=FONT - 1)
    ax.text(2.5, 4.7, "attention weights of one head over the season", ha="center", fontsize=FONT - 1)
    _arrow(ax, (4.7, 2.6), (5.3, 2.6), "linear +\ndate encoding", size=FONT - 2)
    _box(ax, 6.2, 2.6, "embeddings $e_t$\nkeys $k_t = W_k e_t$", SKY, w=1.7, h=0.9, size=FONT - 1)
    _box(ax, 6.2, 4.0, "master query $q_h$\n(learned, one per head)", ORANGE, w=2.2, h=0.7, size=FONT - 1)
    _arrow(ax, (6.2, 3.65), (6.2, 3.1))
    _arrow(ax, (7.05, 2.6), (7.9, 2.6), "weights $a_t$", size=FONT - 1)
    ax.text(7.4, 1.6, "$a_t = \\mathrm{softmax}_t(q_h \\cdot k_t / \\sqrt{d})$", ha="center", fontsize=FONT)
    _box(ax, 8.6, 2.6, "$\\sum_t a_t e^{(h)}_t$\nper head", PURPLE, w=1.4, h=0.9)
    _arrow(ax, (9.3, 2.6), (9.75, 2.6))
    _box(ax, 10.5, 2.6, "concat heads\nMLP -> crop", GREEN, w=1.4, h=0.9, size=FONT - 1)
    ax.text(6, 0.45, "A transformer compares every date with every other ($T \\times T$ weights per head); L-TAE "
            "needs only $T$ weights per head,\nso it is small and fast, and its weights show which dates decide "
            "the class.", ha="center", fontsize=FONT - 1)
    return fig


FIGURES: dict[str, Callable[[], Figure]] = {
    "conv_stride_padding": conv_stride_padding,
    "receptive_field": receptive_field,
    "unet": unet,
    "upsampling": upsampling,
    "attention": attention,
    "vit_patching": vit_patching,
    "simclr": simclr,
    "byol": byol,
    "mae": mae,
    "fusion_early_late": fusion_early_late,
    "ltae": ltae,
}
"""Every diagram of the course by name; ``figures/<name>.png`` is drawn by ``FIGURES[name]``."""


def figures_dir() -> Path | None:
    """The repository's ``figures/`` folder, or ``None`` when the package is installed outside a checkout."""
    root = repo_root()
    return None if root is None else root / "figures"


def _check_name(name: str) -> None:
    if name not in FIGURES:
        raise ValueError(f"no figure named {name!r}; the course's figures are: {', '.join(FIGURES)}")


def render_figure(name: str) -> bytes:
    """The PNG bytes of diagram ``name``, drawn now.

    Raises:
        ValueError: if ``name`` is not one of :data:`FIGURES`.
    """
    _check_name(name)
    fig = FIGURES[name]()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})  # no version stamp: stable bytes
    return buffer.getvalue()


def draw_figure(name: str, path: str | Path) -> Path:
    """Draw diagram ``name`` into the PNG file ``path`` (written atomically); returns the path.

    Raises:
        ValueError: if ``name`` is not one of :data:`FIGURES`.
    """
    data = render_figure(name)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def show_figure(name: str):  # -> IPython.display.Image; IPython is imported only when a notebook asks
    """The diagram ``name`` for a notebook cell to display (put it last in the cell).

    Shows ``figures/<name>.png`` from the repository when it is there; otherwise (a notebook opened
    alone, e.g. on Colab) draws the diagram in memory, so the lesson never misses a figure.

    Raises:
        ValueError: if ``name`` is not one of :data:`FIGURES`.
    """
    from IPython.display import Image

    _check_name(name)
    folder = figures_dir()
    if folder is not None and (folder / f"{name}.png").is_file():
        return Image(filename=str(folder / f"{name}.png"))
    return Image(data=render_figure(name))


def main(argv: Sequence[str] | None = None) -> int:
    """Write the named diagrams (default: all) as PNG files into ``--out`` (default: the repository's figures/)."""
    parser = argparse.ArgumentParser(description="Draw the course's diagrams into PNG files.")
    parser.add_argument("names", nargs="*", help=f"figures to draw (default: all of {', '.join(FIGURES)})")
    parser.add_argument("--out", type=Path, default=figures_dir(), help="output folder (default: figures/)")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("not inside a repository checkout: give the output folder with --out")
    unknown = [name for name in args.names if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    for name in args.names or FIGURES:
        print(draw_figure(name, args.out / f"{name}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
