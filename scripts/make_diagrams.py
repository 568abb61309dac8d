"""Draw the book's diagrams (the model's parts, not measurements) as SVG files in book/figures/.

    .venv/bin/python scripts/make_diagrams.py                    # writes book/figures/*.svg
    .venv/bin/python scripts/make_diagrams.py --png /tmp/figs    # also PNG previews, to look at them

Matplotlib only, no hand-drawn files: every diagram is code, so it changes with the code it explains.
The output is deterministic (a fixed SVG hash salt, no date in the metadata, text drawn as paths with
matplotlib's bundled DejaVu Sans), so rebuilding an unchanged diagram rewrites a byte-identical file;
tests/test_diagrams.py checks that the committed figures are what this script draws.

Each diagram is drawn on one axes whose units are inches of an 8-inch-wide figure (the rendered book
column is about 800 pixels), so positions and font sizes (72 points per inch) can be reasoned about
together. One colour per kind of thing: data and activations blue, parameters and state orange,
operations green.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "book" / "figures"

WIDTH = 8.0  # inches; every axes below spans the whole figure in inch units
FONT, SMALL = 12, 11  # points: box labels, annotations
INK, LINE, MUTED = "#1a1a1a", "#333333", "#555555"
KINDS = {  # kind: (fill, edge)
    "data": ("#dbe9f6", "#1f5a96"),
    "param": ("#fde3c3", "#a64f00"),
    "op": ("#dcefd9", "#2e6b30"),
    "note": ("#f3f3f3", "#8a8a8a"),
}
STREAM = KINDS["data"][1]  # the residual stream and other data lines
STYLE = {  # applied while drawing and saving: deterministic SVG, the same font everywhere
    "svg.hashsalt": "mlxllm",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": FONT,
    "text.color": INK,
    "hatch.linewidth": 0.8,
}


# --- drawing helpers -------------------------------------------------------------------------

@dataclass
class Box:
    """A drawn box: centre (x, y) and size (w, h), in inches; its sides are arrow anchors."""

    x: float
    y: float
    w: float
    h: float

    @property
    def top(self):
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self):
        return (self.x, self.y - self.h / 2)

    @property
    def left(self):
        return (self.x - self.w / 2, self.y)

    @property
    def right(self):
        return (self.x + self.w / 2, self.y)


def canvas(height: float):
    """A WIDTH × height figure whose one axes uses inches as data units."""
    fig = plt.figure(figsize=(WIDTH, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def box(ax, x, y, w, h, text="", kind="op", size=FONT, weight="normal", lw=1.4) -> Box:
    """A rounded box of one kind (data, param, op, note) centred at (x, y), with centred text."""
    fill, edge = KINDS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.07",
                                fc=fill, ec=edge, lw=lw, zorder=2))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight, linespacing=1.25,
                zorder=3)
    return Box(x, y, w, h)


def text(ax, x, y, s, size=SMALL, ha="left", va="center", color=INK, **kw):
    """A label at (x, y); annotations default to the small size."""
    ax.text(x, y, s, fontsize=size, ha=ha, va=va, color=color, linespacing=1.25, zorder=4, **kw)


def arrow(ax, *points, color=LINE, lw=1.4, style="-|>"):
    """A polyline through the points, with an arrowhead on the last one."""
    xs, ys = zip(*points)
    if len(points) > 2:
        ax.plot(xs[:-1], ys[:-1], color=color, lw=lw, solid_joinstyle="miter", zorder=1)
    ax.annotate("", xy=points[-1], xytext=points[-2], zorder=1,
                arrowprops=dict(arrowstyle=style, color=color, lw=lw, shrinkA=0, shrinkB=0,
                                mutation_scale=14))


def line(ax, *points, color=LINE, lw=1.4, zorder=1):
    """A polyline without an arrowhead."""
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, lw=lw, solid_capstyle="butt", zorder=zorder)


def plus(ax, x, y, r=0.16, color=STREAM):
    """The ⊕ where a branch is added back to the stream."""
    ax.add_patch(Circle((x, y), r, fc="white", ec=color, lw=1.6, zorder=3))
    line(ax, (x - r * 0.6, y), (x + r * 0.6, y), color=color, lw=1.6, zorder=4)
    line(ax, (x, y - r * 0.6), (x, y + r * 0.6), color=color, lw=1.6, zorder=4)


def legend(ax, x, y):
    """A row of coloured squares saying what each colour means, starting at (x, y)."""
    for kind, label in (("data", "data, activations"), ("param", "parameters, state"), ("op", "operation")):
        box(ax, x + 0.1, y, 0.2, 0.2, kind=kind, lw=1.2)
        text(ax, x + 0.3, y, label, color=MUTED)
        x += 0.45 + 0.083 * len(label)


def grid_cells(ax, x0, y0, cell, colours):
    """A grid of square cells coloured colours[i][j], row 0 at the top, with its top-left corner at (x0, y0)."""
    for i, row in enumerate(colours):
        for j, colour in enumerate(row):
            ax.add_patch(Rectangle((x0 + j * cell, y0 - (i + 1) * cell), cell, cell, fc=colour, ec="white",
                                   lw=1.2, zorder=2))


# --- 1. the pipeline ---------------------------------------------------------------------------

def pipeline():
    """Text → tokens → ids → embedding → N blocks → final norm → LM head → probabilities, by part."""
    fig, ax = canvas(4.8)
    gap = 0.3

    def row(y, items, x):
        boxes = []
        for label, kind, w in items:
            boxes.append(box(ax, x + w / 2, y, w, 0.7, label, kind))
            x += w + gap
        for a, b in zip(boxes, boxes[1:]):
            arrow(ax, a.right, b.left)
        return boxes

    def part(boxes, y, title, chapters):
        x0, x1 = boxes[0].left[0], boxes[-1].right[0]
        line(ax, (x0, y - 0.2), (x1, y - 0.2), color=MUTED, lw=1.0)
        text(ax, x0, y, title, size=FONT, weight="bold", va="bottom")
        text(ax, x1, y, chapters, size=SMALL, ha="right", va="bottom", color=MUTED)

    y1, y2 = 3.75, 1.5
    top = row(y1, [("text\n“The cat sat”", "data", 1.3), ("tokenizer\n(BPE)", "op", 1.1),
                   ("", "data", 1.75), ("embedding\n+ positions", "op", 1.3), ("vectors\nT × C", "data", 1.05)],
              0.1)
    tokens = top[2]  # tokens over their ids, one column per token
    for k, (token, token_id) in enumerate([("The", "464"), ("␣cat", "3797"), ("␣sat", "3332")]):
        x = tokens.left[0] + tokens.w * (k + 0.5) / 3
        text(ax, x, y1 + 0.16, token, size=FONT, ha="center")
        text(ax, x, y1 - 0.17, token_id, size=FONT, ha="center", color=STREAM)
        if k:
            x_split = tokens.left[0] + tokens.w * k / 3
            line(ax, (x_split, y1 - 0.3), (x_split, y1 + 0.3), color=KINDS["data"][1], lw=0.8, zorder=3)
    text(ax, tokens.x, y1 - 0.5, "tokens → ids (T = 3)", ha="center", color=MUTED)
    part(top[:3], y1 + 0.6, "1  Tokenization", "Chapter 1")
    part(top[3:], y1 + 0.6, "2  Embedding", "Chapter 2")
    box(ax, top[3].x, y1 - 0.8, 1.3, 0.36, "table V × C", "param", size=SMALL)

    bottom = row(y2, [("N × transformer\nblock", "op", 1.65), ("final\nnorm", "op", 0.85),
                      ("LM head\nC → V", "op", 1.05), ("softmax", "op", 0.95),
                      ("probabilities\nT × V", "data", 1.4)], 0.45)
    part(bottom[:1], y2 + 0.6, "3  Blocks", "Ch. 3–4")
    part(bottom[1:], y2 + 0.6, "4  Prediction", "Chapter 5")
    box(ax, bottom[0].x, y2 - 0.8, 1.65, 0.36, "weights per block", "param", size=SMALL)
    box(ax, bottom[2].x, y2 - 0.8, 1.25, 0.36, "V × C (tied)", "param", size=SMALL)
    text(ax, (bottom[2].right[0] + bottom[3].left[0]) / 2 + 0.1, y2 - 0.48, "logits T × V", ha="center",
         color=MUTED)
    # from the end of the first row to the start of the second, passing left of everything
    x_end = top[-1]
    arrow(ax, x_end.bottom, (x_end.x, 2.6), (0.2, 2.6), (0.2, y2), bottom[0].left)
    text(ax, 3.0, 2.75, "T × C: one C-vector per token", ha="center", color=MUTED)
    legend(ax, 0.25, 0.22)
    return fig


# --- 2. the transformer block --------------------------------------------------------------------

def transformer_block():
    """A pre-norm block on the residual stream, with shapes; inset: post-norm against pre-norm."""
    fig, ax = canvas(6.9)
    sx, bx = 0.95, 2.75  # the stream, the branches' column
    shape = "(B, T, C)"

    top = box(ax, sx + 0.35, 6.45, 1.7, 0.5, f"x  {shape}", "data")
    text(ax, top.right[0] + 0.15, 6.45, "from the embedding\nor the previous block", color=MUTED)
    bottom = box(ax, sx + 0.35, 0.45, 1.7, 0.5, f"x  {shape}", "data")
    text(ax, bottom.right[0] + 0.15, 0.45, "to the next block; after the last:\nfinal norm, then the LM head",
         color=MUTED)
    line(ax, (sx, top.bottom[1]), (sx, bottom.top[1]), color=STREAM, lw=3.2)
    text(ax, sx - 0.32, 3.45, f"residual stream  {shape}", size=FONT, ha="center", rotation=90, color=STREAM)

    def branch(y_tap, norm_label, name, detail, y_plus, equation):
        norm = box(ax, bx, y_tap, 2.0, 0.55, norm_label, "op")
        arrow(ax, (sx, y_tap), norm.left)
        body = box(ax, bx, y_tap - 0.95, 2.0, 0.62, name, "op")
        arrow(ax, norm.bottom, body.top)
        text(ax, bx + 0.1, (norm.bottom[1] + body.top[1]) / 2, shape, color=STREAM)
        text(ax, body.right[0] + 0.15, body.y, detail, color=MUTED)
        arrow(ax, body.bottom, (bx, y_plus), (sx + 0.16, y_plus))
        text(ax, bx + 0.1, (body.bottom[1] + y_plus) / 2, shape, color=STREAM)
        plus(ax, sx, y_plus)
        text(ax, sx + 0.3, y_plus - 0.4, equation, size=FONT)

    branch(5.75, "norm₁: LayerNorm\nor RMSNorm", "causal multi-head\nattention",
           "H heads,\ncausal mask\n(Chapter 3)", 4.1, "x ← x + attention(norm₁(x))")
    branch(3.25, "norm₂: LayerNorm\nor RMSNorm", "feed-forward\nGELU MLP or SwiGLU",
           "C → 4C → C,\neach position\nalone\n(Chapter 4)", 1.6, "x ← x + FFN(norm₂(x))")

    # inset: where the norm goes
    ix, fx = 5.8, 7.0  # the inset's stream and branch columns
    ax.add_patch(FancyBboxPatch((5.3, 0.25), 2.6, 6.45, boxstyle="round,pad=0,rounding_size=0.1",
                                fc="#fafafa", ec=KINDS["note"][1], lw=1.0, zorder=0))
    text(ax, 6.6, 6.45, "where the norm goes", size=FONT, ha="center", weight="bold")

    def mini(y0, title, equation, pre_norm):
        text(ax, 5.45, y0, title, size=SMALL, weight="bold")
        y_tap = y0 - 0.45
        if pre_norm:
            norm = box(ax, fx, y_tap, 0.9, 0.36, "norm", "op", size=SMALL)
            f = box(ax, fx, y_tap - 0.6, 0.9, 0.36, "f", "op", size=SMALL)
            arrow(ax, (ix, y_tap), norm.left)
            arrow(ax, norm.bottom, f.top)
        else:
            f = box(ax, fx, y_tap - 0.35, 0.9, 0.36, "f", "op", size=SMALL)
            line(ax, (ix, y_tap), (fx, y_tap))
            arrow(ax, (fx, y_tap), f.top)
        y_plus = f.bottom[1] - 0.3
        arrow(ax, f.bottom, (fx, y_plus), (ix + 0.13, y_plus))
        plus(ax, ix, y_plus, r=0.13)
        y_end = y_plus - 0.85 if not pre_norm else y_plus - 0.45
        line(ax, (ix, y0 - 0.25), (ix, y_end), color=STREAM, lw=2.4)
        if not pre_norm:  # the norm sits on the stream itself
            box(ax, ix, y_plus - 0.45, 0.75, 0.32, "norm", "op", size=SMALL)
        text(ax, 6.6, y_end - 0.28, equation, size=SMALL, ha="center")

    mini(6.05, "post-norm (2017)", "x ← norm(x + f(x))", pre_norm=False)
    mini(3.25, "pre-norm (GPT-2, LLaMA)", "x ← x + f(norm(x))", pre_norm=True)
    text(ax, 6.6, 0.55, "+ one final norm\nbefore the LM head", size=SMALL, ha="center", color=MUTED)
    return fig


# --- 3. heads: reshape, transpose, attention, and grouped-query k/v ---------------------------

def multihead_reshape():
    """The shapes of multi-head attention, step by step; and k/v with fewer heads (MHA, GQA, MQA)."""
    fig, ax = canvas(7.3)
    lanes = {"q": 1.5, "k": 2.65, "v": 3.8}
    y = {"x": 6.95, "proj": 6.2, "reshape": 5.4, "transpose": 4.6, "scores": 3.8, "softmax": 3.0,
         "mix": 2.2, "merge": 1.4, "out": 0.6}
    w, h = 1.05, 0.42

    def shape(x, y0, y1, s):  # a data shape written beside the arrow from y0 down to y1
        text(ax, x + 0.08, (y0 + y1) / 2, s, color=STREAM)

    x = box(ax, lanes["k"], y["x"], 1.7, 0.45, "x  (B, T, C)", "data")
    for name, lx in lanes.items():
        proj = box(ax, lx, y["proj"], w, h, f"{name}_proj", "op")
        arrow(ax, (x.x + (lx - x.x) * 0.4, x.bottom[1]), proj.top)
        reshape = box(ax, lx, y["reshape"], w, h, "reshape", "op")
        arrow(ax, proj.bottom, reshape.top)
        transpose = box(ax, lx, y["transpose"], w, 0.55, "transpose\n(0, 2, 1, 3)", "op", size=SMALL)
        arrow(ax, reshape.bottom, transpose.top)
    right = lanes["v"] + 0.1
    shape(right, y["proj"] - h / 2, y["reshape"] + h / 2, "(B, T, C)")
    shape(right, y["reshape"] - h / 2, y["transpose"] + 0.275, "(B, T, H, D)")
    shape(right, y["transpose"] - 0.275, y["scores"] + h / 2, "(B, H, T, D)")
    text(ax, lanes["k"] + 1.0, y["x"], "H heads,\nD = C / H", color=MUTED)

    qk = (lanes["q"] + lanes["k"]) / 2
    scores = box(ax, qk, y["scores"], 2.2, h, "q @ kᵀ / √D", "op")
    for lane in "qk":
        arrow(ax, (lanes[lane], y["transpose"] - 0.275), (lanes[lane], scores.top[1]))
    softmax = box(ax, qk, y["softmax"], 2.2, h, "causal mask, softmax", "op")
    arrow(ax, scores.bottom, softmax.top)
    shape(qk, scores.bottom[1], softmax.top[1], "scores (B, H, T, T)")
    mix = box(ax, lanes["k"], y["mix"], 3.4, h, "weights @ v", "op")
    arrow(ax, softmax.bottom, (qk, mix.top[1]))
    shape(qk, softmax.bottom[1], mix.top[1], "(B, H, T, T)")
    arrow(ax, (lanes["v"], y["transpose"] - 0.275), (lanes["v"], mix.top[1]))
    merge = box(ax, lanes["k"], y["merge"], 3.4, h, "transpose back, reshape", "op")
    arrow(ax, mix.bottom, merge.top)
    shape(lanes["k"], mix.bottom[1], merge.top[1], "(B, H, T, D)")
    out = box(ax, lanes["k"], y["out"], 1.0, h, "o_proj", "op")
    arrow(ax, merge.bottom, out.top)
    shape(lanes["k"], merge.bottom[1], out.top[1], "(B, T, C): heads side by side")
    arrow(ax, out.right, (out.right[0] + 0.45, out.y))
    text(ax, out.right[0] + 0.52, out.y, "(B, T, C)", size=FONT, color=STREAM)

    # the causal mask, small, beside its box: query rows, key columns, the future blanked out
    n, cell = 5, 0.13
    colours = [[KINDS["data"][1] if j <= i else "#e6e6e6" for j in range(n)] for i in range(n)]
    grid_cells(ax, 0.12, y["softmax"] + 0.5, cell, colours)
    text(ax, 0.12 + n * cell / 2, y["softmax"] - 0.4, "causal\nmask", ha="center", color=MUTED)

    # k and v with fewer heads
    px = 5.3
    ax.add_patch(FancyBboxPatch((px - 0.12, 0.25), 2.8, 6.95, boxstyle="round,pad=0,rounding_size=0.1",
                                fc="#fafafa", ec=KINDS["note"][1], lw=1.0, zorder=0))
    text(ax, px + 1.28, 6.95, "k and v with fewer heads", size=FONT, ha="center", weight="bold")
    text(ax, px + 1.28, 6.45, "H = 8 query heads share\nH_kv key/value heads", ha="center", color=MUTED)
    size, step, q0 = 0.2, 0.27, px + 0.45  # head squares, their spacing, the first one's left side
    for k, (name, n_kv, y0) in enumerate([("MHA: H_kv = H = 8", 8, 5.7), ("GQA: H_kv = 2", 2, 4.1),
                                          ("MQA: H_kv = 1", 1, 2.5)]):
        text(ax, px, y0, name, size=SMALL, weight="bold")
        qy, kvy = y0 - 0.45, y0 - 1.15
        group = 8 // n_kv
        kv_x = []
        for g in range(n_kv):
            xs = [q0 + (g * group + i) * step + size / 2 for i in range(group)]
            kv_x.append(sum(xs) / len(xs))
            for qx in xs:
                line(ax, (qx, qy - size / 2), (kv_x[-1], kvy + size / 2), color=MUTED, lw=0.9)
        for i in range(8):
            box(ax, q0 + i * step + size / 2, qy, size, size, kind="data", lw=1.1)
        for g, gx in enumerate(kv_x):
            box(ax, gx, kvy, size, size, kind="data", lw=1.1)
            ax.add_patch(Rectangle((gx - size / 2, kvy - size / 2), size, size, fc=STREAM, ec=STREAM, zorder=3))
        text(ax, px, qy, "q", color=MUTED)
        text(ax, px, kvy, "k, v", color=MUTED)
    text(ax, px + 1.28, 0.85, "k_proj, v_proj: C → H_kv·D\nk, v: (B, H_kv, T, D); one head\n"
         "serves H / H_kv query heads", ha="center", color=INK)
    return fig


# --- 4. the causal mask and the KV cache ------------------------------------------------------

PREFILL, STEP1, STEP2, EMPTY, MASKED = "#9ecae1", "#3b82c4", "#123f73", "white", "#e6e6e6"
DARK = {STEP1, STEP2}


def kv_cache():
    """The causal mask coloured by which call computes each query row, and the cache growing per step."""
    fig, ax = canvas(4.5)
    prompt, n = 4, 6
    by_row = [PREFILL] * prompt + [STEP1, STEP2]
    cell, x0, y0 = 0.4, 0.85, 3.65
    colours = [[by_row[i] if j <= i else MASKED for j in range(n)] for i in range(n)]
    grid_cells(ax, x0, y0, cell, colours)
    for i in range(n):
        text(ax, x0 - 0.1, y0 - (i + 0.5) * cell, str(i), ha="right")
        text(ax, x0 + (i + 0.5) * cell, y0 + 0.15, str(i), ha="center")
    text(ax, x0 + n * cell / 2, y0 + 0.45, "key position", ha="center", size=FONT)
    text(ax, x0 - 0.45, y0 - n * cell / 2, "query position", ha="center", size=FONT, rotation=90)
    text(ax, x0 + n * cell / 2, y0 - n * cell - 0.3, "grey: masked (−∞ before softmax)", ha="center",
         color=MUTED)
    text(ax, x0 + n * cell / 2, y0 - n * cell - 0.62, "row t attends to keys 0 … t", ha="center", color=MUTED)
    # which call computes which rows
    bx = x0 + n * cell + 0.12
    line(ax, (bx, y0 - 0.05), (bx, y0 - prompt * cell + 0.05), color=INK, lw=1.2)
    text(ax, bx + 0.1, y0 - prompt * cell / 2, "prompt:\nprefill,\none call", size=SMALL)
    for k in range(2):
        text(ax, bx + 0.1, y0 - (prompt + k + 0.5) * cell, f"step {k + 1}", size=SMALL)

    # the cache, after each call: preallocated slots, filled up to offset
    cx, slot = 4.75, 0.32
    capacity = 7
    snapshots = [("after the prefill: offset = 4", prompt, None),
                 ("step 1: token 4 appends k₄, v₄", prompt + 1, 4),
                 ("step 2: token 5 appends k₅, v₅", prompt + 2, 5)]
    for s, (title, filled, new) in enumerate(snapshots):
        ty = 4.15 - s * 1.3
        text(ax, cx - 0.35, ty, title, size=SMALL, weight="bold")
        for r, name in enumerate("kv"):
            ry = ty - 0.42 - r * slot
            text(ax, cx - 0.12, ry, name.upper(), ha="right", size=SMALL)
            for j in range(capacity):
                colour = by_row[j] if j < filled else EMPTY
                ax.add_patch(Rectangle((cx + j * slot, ry - slot / 2), slot, slot, fc=colour,
                                       ec=KINDS["data"][1] if j < filled else "#9a9a9a", lw=1.1,
                                       ls="-" if j < filled else (0, (2, 2)), zorder=2))
                if j < filled:
                    text(ax, cx + (j + 0.5) * slot, ry, f"{name}{'₀₁₂₃₄₅'[j]}", ha="center",
                         color="white" if colour in DARK else INK)
        if new is not None:
            qx = cx + capacity * slot + 0.3
            box(ax, qx, ty - 0.42 - slot / 2, 0.42, 0.42, f"q{'₀₁₂₃₄₅'[new]}", "data", size=SMALL)
    text(ax, cx - 0.35, 0.4, "qₜ, the new token's query, reads all of K, V", color=MUTED)
    text(ax, cx - 0.35, 0.14, "dashed: preallocated, not yet written", color=MUTED)
    return fig


# --- 5. the training loop ---------------------------------------------------------------------

def training_loop():
    """One training step: batch → forward → loss → gradients → clip → AdamW → mx.eval, with the
    compiled part marked and the evaluation and checkpoint every few steps."""
    fig, ax = canvas(5.6)
    yt, yb = 4.2, 2.35
    compiled = (2.1, 0.55, 5.8, 4.6)  # x, y, w, h
    ax.add_patch(FancyBboxPatch(compiled[:2], *compiled[2:], boxstyle="round,pad=0,rounding_size=0.12",
                                fc="#f7faf6", ec=KINDS["op"][1], lw=1.3, ls=(0, (5, 3)), zorder=0))
    text(ax, compiled[0] + 0.15, compiled[1] + 0.22, "mx.compile(step): traced once, then replayed",
         color=KINDS["op"][1], weight="bold")

    batch = box(ax, 1.0, yt, 1.75, 0.95, "batch\ninputs (B, T)\ntargets (B, T)", "data")
    text(ax, 0.12, yt + 0.78, "targets = inputs\nshifted by one", color=MUTED)
    forward = box(ax, 2.95, yt, 1.3, 0.62, "forward\nmodel(inputs)", "op", size=SMALL)
    loss = box(ax, 4.9, yt, 1.1, 0.62, "cross-\nentropy", "op")
    backward = box(ax, 6.85, yt, 1.65, 0.62, "backward\nvalue_and_grad", "op", size=SMALL)
    clip = box(ax, 6.85, yb, 1.65, 0.62, "clip by\nglobal norm", "op")
    adamw = box(ax, 4.05, yb, 2.1, 0.62, "AdamW update", "op")
    evaluate = box(ax, 1.0, yb, 1.75, 0.95, "mx.eval(loss,\nmodel.state,\noptimizer.state)", "op", size=SMALL)
    params = box(ax, 2.95, (yt + yb) / 2, 1.3, 0.45, "parameters θ", "param", size=SMALL)
    moments = box(ax, 4.9, (yt + yb) / 2, 1.1, 0.45, "AdamW m, v", "param", size=SMALL)
    schedule = box(ax, 5.2, 1.3, 1.9, 0.62, "", "op")
    text(ax, schedule.left[0] + 0.1, schedule.y, "lr schedule", size=SMALL)
    # the schedule's shape: linear warmup, then cosine decay
    xs = [schedule.x + 0.15 + 0.7 * i / 40 for i in range(41)]
    ys = [min(i / 8, 0.5 + 0.5 * math.cos(math.pi * max(i - 8, 0) / 32)) for i in range(41)]
    ax.plot(xs, [schedule.y - 0.2 + 0.4 * v for v in ys], color=KINDS["op"][1], lw=1.6, zorder=4)

    arrow(ax, batch.right, forward.left)
    arrow(ax, (batch.x + 0.7, batch.top[1]), (batch.x + 0.7, 4.85), (loss.x, 4.85), loss.top)
    text(ax, loss.x - 0.1, 4.93, "targets", ha="right", va="bottom", color=STREAM)
    arrow(ax, forward.right, loss.left)
    gap = (forward.right[0] + loss.left[0]) / 2
    text(ax, gap, yt + 0.1, "logits", ha="center", va="bottom", color=STREAM)
    text(ax, gap, yt - 0.1, "(B, T, V)", ha="center", va="top", color=STREAM)
    arrow(ax, loss.right, backward.left)
    text(ax, (loss.right[0] + backward.left[0]) / 2, yt + 0.1, "loss", ha="center", va="bottom", color=STREAM)
    arrow(ax, backward.bottom, clip.top)
    text(ax, backward.x - 0.1, (backward.bottom[1] + clip.top[1]) / 2, "gradients\n(a tree like θ)",
         ha="right", color=STREAM)
    arrow(ax, clip.left, adamw.right)
    arrow(ax, params.top, forward.bottom)
    arrow(ax, (params.x, adamw.top[1]), params.bottom)
    text(ax, params.x - 0.1, (params.top[1] + forward.bottom[1]) / 2, "read", ha="right", color=MUTED)
    text(ax, params.x - 0.1, (params.bottom[1] + adamw.top[1]) / 2, "write", ha="right", color=MUTED)
    arrow(ax, (moments.x, adamw.top[1]), moments.bottom, style="<|-|>")
    arrow(ax, schedule.top, (schedule.x, adamw.bottom[1]))
    text(ax, schedule.x + 0.1, (schedule.top[1] + adamw.bottom[1]) / 2, "learning rate", color=MUTED)
    arrow(ax, adamw.left, evaluate.right)
    arrow(ax, evaluate.top, batch.bottom)
    text(ax, evaluate.x + 0.1, (evaluate.top[1] + batch.bottom[1]) / 2, "next step", color=MUTED)

    every = box(ax, 1.0, 0.75, 1.75, 0.95, "every few steps:\nevaluate,\ncheckpoint", "note")
    arrow(ax, evaluate.bottom, every.top)
    legend(ax, 2.3, 0.2)
    return fig


# --- 6. data parallel -------------------------------------------------------------------------

def data_parallel():
    """N ranks, each with the whole model and its rows of the batch; one all-reduce; the same update."""
    fig, ax = canvas(5.9)
    xs = [1.15, 3.05, 4.95, 6.85]
    yb = 5.35  # the global batch, cut into N shards of rows
    text(ax, 4.0, yb + 0.38, "the global batch: B = 8 rows (the same seed on every rank), N = 4 shards of B / N",
         ha="center")
    for r, x in enumerate(xs):
        box(ax, x, yb, 1.85, 0.42, f"rows {2 * r}–{2 * r + 1}", "data", size=SMALL)
        ax.add_patch(FancyBboxPatch((x - 0.82, 0.55), 1.64, 4.35, boxstyle="round,pad=0,rounding_size=0.1",
                                    fc="#f6f6f6", ec="#bdbdbd", lw=1.0, zorder=0))
        text(ax, x, 4.65, f"rank {r}", size=FONT, ha="center", weight="bold")
        arrow(ax, (x, yb - 0.21), (x, 4.85))
        model = box(ax, x, 4.05, 1.4, 0.5, "model θ\n(whole copy)", "param", size=SMALL)
        work = box(ax, x, 3.1, 1.5, 0.55, "forward, backward\non its 2 rows", "op", size=SMALL)
        arrow(ax, model.bottom, work.top)
        local = box(ax, x, 2.25, 1.0, 0.42, f"g{'₀₁₂₃'[r]}", "data")
        arrow(ax, work.bottom, local.top)
        box(ax, x, 0.9, 1.4, 0.5, "AdamW\nupdate", "op", size=SMALL)
        arrow(ax, (x, local.bottom[1]), (x, 1.81))
        arrow(ax, (x, 1.39), (x, 1.15))
    box(ax, 4.0, 1.6, 7.5, 0.42, "all-reduce: g = (g₀ + g₁ + g₂ + g₃) / N, the same g on every rank", "op",
        size=SMALL)
    text(ax, 4.0, 0.3, "the same g, the same update: the copies of θ never drift apart", ha="center",
         color=MUTED)
    return fig


# --- 7. LoRA ----------------------------------------------------------------------------------

def lora():
    """A frozen W in parallel with the trainable low-rank path B·A, scaled by α/r and added."""
    fig, ax = canvas(4.3)
    yw, ya, ym = 3.3, 1.45, 2.3  # the frozen path, the low-rank path, the middle
    x = box(ax, 0.55, ym, 0.8, 0.6, "x\n(k)", "data")
    split = 1.15
    line(ax, x.right, (split, ym))
    # W: d × k, drawn to scale with A (r × k) and B (d × r), for d = k = 4r
    side, thin = 1.0, 0.26
    w = box(ax, 2.75, yw, side, side, "", "param")
    ax.add_patch(Rectangle((w.x - side / 2, yw - side / 2), side, side, fc="none", ec="#e9b67a", hatch="///",
                           lw=0, zorder=2))
    ax.text(w.x, yw, "W\nd × k", ha="center", va="center", fontsize=FONT, linespacing=1.25, zorder=3,
            bbox=dict(boxstyle="round,pad=0.15", fc=KINDS["param"][0], ec="none"))
    text(ax, w.x, w.top[1] + 0.2, "frozen: nn.Linear, or 4-bit (QLoRA)", ha="center")
    arrow(ax, (split, ym), (split, yw), w.left)
    a = box(ax, 2.2, ya, side, thin, "A", "param", size=SMALL)
    text(ax, a.x, ya - 0.35, "r × k, random", ha="center")
    b = box(ax, 3.55, ya, thin, side, "B", "param", size=SMALL)
    text(ax, b.x, b.bottom[1] - 0.2, "d × r, zeros", ha="center")
    text(ax, 2.85, ya + 0.62, "trainable", ha="center", weight="bold", color=KINDS["param"][1])
    arrow(ax, (split, ym), (split, ya), a.left)
    arrow(ax, a.right, b.left)
    text(ax, (a.right[0] + b.left[0]) / 2, ya + 0.08, "(r)", ha="center", va="bottom", color=STREAM)
    sx = 4.55
    ax.add_patch(Circle((sx, ya), 0.31, fc=KINDS["op"][0], ec=KINDS["op"][1], lw=1.4, zorder=2))
    text(ax, sx, ya, "× α/r", ha="center")
    arrow(ax, b.right, (sx - 0.31, ya))
    px = 5.45
    plus(ax, px, ym, r=0.2, color=LINE)
    arrow(ax, w.right, (px, yw), (px, ym + 0.2))
    text(ax, 4.35, yw + 0.1, "W x  (d)", ha="center", va="bottom", color=STREAM)
    arrow(ax, (sx + 0.31, ya), (px, ya), (px, ym - 0.2))
    text(ax, 5.16, ya + 0.1, "(d)", ha="center", va="bottom", color=STREAM)
    h = box(ax, 6.75, ym, 1.5, 0.6, "h\n(d)", "data")
    arrow(ax, (px + 0.2, ym), h.left)
    text(ax, 6.75, ym + 0.62, "h = W x + (α/r)·B A x", ha="center", size=FONT)
    text(ax, 4.0, 0.25, "trainable: r·(d + k) numbers instead of d·k;  merged for inference: W + (α/r)·B A",
         ha="center", color=MUTED)
    return fig


DIAGRAMS = {
    "pipeline": pipeline,
    "transformer_block": transformer_block,
    "multihead_reshape": multihead_reshape,
    "kv_cache": kv_cache,
    "training_loop": training_loop,
    "data_parallel": data_parallel,
    "lora": lora,
}


def write(name: str, folder: Path, png: Path | None = None) -> Path:
    """Draw one diagram into folder/name.svg (and a PNG preview into png/, if given); returns the SVG path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.svg"
    with plt.rc_context(STYLE):
        fig = DIAGRAMS[name]()
        fig.savefig(path, format="svg", metadata={"Date": None})
        if png is not None:
            png.mkdir(parents=True, exist_ok=True)
            fig.savefig(png / f"{name}.png", dpi=100)
        plt.close(fig)
    return path


def write_all(folder: Path = FIGURES, png: Path | None = None) -> list[Path]:
    """Draw every diagram into folder; returns the SVG paths."""
    return [write(name, folder, png) for name in DIAGRAMS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the SVG files")
    parser.add_argument("--png", type=Path, default=None, help="also write PNG previews into this folder")
    args = parser.parse_args()
    for path in write_all(args.out, args.png):
        print(path)


if __name__ == "__main__":
    main()
