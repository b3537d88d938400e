r"""Hidden-state visualisation for character models (Karpathy, Johnson & Fei-Fei 2015).

Run a trained character model over a text, take one hidden unit's activation at every character,
and colour the text by it; then look for *interpretable* units by correlating every unit with
indicator sequences of the text (inside quotes, position in the line, inside brackets, ...).

Alignment: the state at step ``i`` has read ``text[: i + 1]``, so every indicator here describes
the situation *after reading character i* (the opening quote itself is already "inside", the
closing quote is not).
"""

from __future__ import annotations

import html as _html
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "char_features",
    "hidden_states",
    "html_page",
    "html_text",
    "render_html",
    "render_png",
    "top_units",
    "unit_correlations",
]


# --------------------------------------------------------------------------------------------
# States
# --------------------------------------------------------------------------------------------


def hidden_states(model: Any, params: dict, tokens: Any, *, which: str = "auto",
                  layer: int = -1) -> np.ndarray:
    """One layer's states of a char ``SequenceModel`` over one token sequence.

    Args:
      model: a :class:`seqjax.models.SequenceModel` (``embed_size > 0``, token inputs).
      params: its params.
      tokens: ``[N]`` int token ids.
      which: ``"h"`` (hidden output; TCN: block output), ``"c"`` (LSTM cell state),
        ``"tanh_c"`` (:math:`\tanh(c)`, in (-1, 1), what Karpathy et al. show), or ``"auto"``
        (``"tanh_c"`` for LSTMs, ``"h"`` otherwise).
      layer: which layer (or TCN block).

    Returns:
      ``[N, H]`` float64 numpy.
    """
    import jax.numpy as jnp

    from seqjax.analysis.flow import model_states

    tokens = np.asarray(tokens)
    if tokens.dtype == np.bool_ or not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"tokens.dtype={tokens.dtype} must be an integer dtype (token ids)")
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens.shape={tokens.shape} must be (N,) with N >= 1 token ids")
    if not getattr(model, "embed_size", 0):
        raise ValueError(f"model must be a token SequenceModel (embed_size > 0), got {model!r}")
    if tokens.min() < 0 or tokens.max() >= model.input_size:
        raise ValueError(f"tokens must lie in [0, vocab_size={model.input_size}), got min "
                         f"{tokens.min()} max {tokens.max()}")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer={layer!r} must be an int")
    if not -model.num_layers <= layer < model.num_layers:
        raise ValueError(f"layer={layer} must be in [-{model.num_layers}, {model.num_layers})")
    is_lstm = "lstm" in model.arch
    if which == "auto":
        which = "tanh_c" if is_lstm else "h"
    if which not in ("h", "c", "tanh_c"):
        raise ValueError(f"which={which!r} must be 'h', 'c', 'tanh_c' or 'auto'")
    if which != "h" and not is_lstm:
        raise ValueError(f"which={which!r} needs an LSTM model, got arch={model.arch!r}")
    _, states = model_states(model, params, jnp.asarray(tokens[None], jnp.int32))
    arr = np.asarray(states["h" if which == "h" else "c"][layer, 0], np.float64)
    return np.tanh(arr) if which == "tanh_c" else arr


# --------------------------------------------------------------------------------------------
# Indicator sequences and correlations
# --------------------------------------------------------------------------------------------

_OPEN, _CLOSE = "([{", ")]}"


def char_features(text: str, *, quotes: str = '"', reset_at_newline: bool = True,
                  brackets: str = "()[]{}") -> dict[str, np.ndarray]:
    """Indicator sequences of ``text``, each ``[N]`` float64, after reading character ``i``.

    * ``inside_quotes``: 1 between an opening quote and its closing quote (any character of
      ``quotes``; a quote closes only the kind that opened it), opening quote included;
      ``reset_at_newline`` ends an unclosed quote at the end of the line.
    * ``position_in_line``: characters since the last newline (0 at the newline itself).
    * ``inside_brackets``: 1 while the bracket depth is positive.
    * ``bracket_depth``: the depth (unmatched closers are ignored; it never goes below 0).
    * ``inside_word``: 1 on letters (and apostrophes between letters).

    Args:
      text: the text.
      quotes: the quote characters.
      reset_at_newline: close an open quote at a newline.
      brackets: pairs of opening/closing characters, e.g. ``"()[]{}"``.
    """
    for name, v in (("text", text), ("quotes", quotes), ("brackets", brackets)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a str, got {type(v).__name__}")
    if len(brackets) % 2:
        raise ValueError(f"brackets={brackets!r} must hold pairs of opening/closing characters")
    pairs = {brackets[i]: brackets[i + 1] for i in range(0, len(brackets) - 1, 2)}
    closers = set(pairs.values())
    n = len(text)
    quote = np.zeros(n)
    pos = np.zeros(n)
    depth = np.zeros(n)
    word = np.zeros(n)
    open_q = None
    d = 0
    col = 0
    for i, ch in enumerate(text):
        if ch == "\n":
            col = 0
            if reset_at_newline:
                open_q = None
        else:
            col += 1
        if ch in quotes:
            if open_q is None:
                open_q = ch
            elif open_q == ch:
                open_q = None
        if ch in pairs:
            d += 1
        elif ch in closers and d > 0:
            d -= 1
        quote[i] = 0.0 if open_q is None else 1.0
        pos[i] = col
        depth[i] = d
        prev_alpha = i > 0 and text[i - 1].isalpha()
        next_alpha = i + 1 < n and text[i + 1].isalpha()
        word[i] = 1.0 if ch.isalpha() or (ch == "'" and prev_alpha and next_alpha) else 0.0
    return {"inside_quotes": quote, "position_in_line": pos,
            "inside_brackets": (depth > 0).astype(np.float64), "bracket_depth": depth,
            "inside_word": word}


def unit_correlations(states: Any, feature: Any) -> np.ndarray:
    """Pearson correlation of every unit with a feature.

    Args:
      states: ``[N, H]``.
      feature: ``[N]``.

    Returns:
      ``[H]``; 0 for units (or a feature) with zero variance.
    """
    s = np.asarray(states, np.float64)
    f = np.asarray(feature, np.float64)
    if s.ndim != 2 or f.shape != (s.shape[0],):
        raise ValueError(f"states.shape={s.shape} must be [N, H] and feature.shape={f.shape} "
                         f"must be ({s.shape[0] if s.ndim else '?'},)")
    sc = s - s.mean(axis=0)
    fc = f - f.mean()
    den = np.sqrt((sc**2).sum(axis=0) * (fc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (sc * fc[:, None]).sum(axis=0) / den
    return np.where(den > 0, r, 0.0)


def top_units(states: Any, features: Mapping[str, Any], k: int = 3
              ) -> dict[str, list[tuple[int, float]] | None]:
    """The ``k`` units with the largest ``|r|`` for each feature.

    Returns:
      ``{feature: [(unit, r), ...] by decreasing |r|}``; ``None`` for a feature that is constant
      on this text (nothing to correlate with).
    """
    if not isinstance(features, Mapping):
        raise TypeError(f"features must be a mapping name -> [N] values (char_features), got "
                        f"{type(features).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int")
    out: dict[str, list[tuple[int, float]] | None] = {}
    for name, f in features.items():
        if np.ptp(np.asarray(f, np.float64)) == 0:
            out[name] = None
            continue
        r = unit_correlations(states, f)
        order = np.argsort(-np.abs(r), kind="stable")[:k]
        out[name] = [(int(u), float(r[u])) for u in order]
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _colours(values: np.ndarray, vmin: float | None, vmax: float | None, cmap: str):
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    bound = float(np.max(np.abs(finite))) if finite.size else 1.0
    bound = bound or 1.0
    lo = -bound if vmin is None else vmin
    hi = bound if vmax is None else vmax
    norm = Normalize(lo, hi, clip=True)
    return colormaps[cmap](norm(np.nan_to_num(v))), (lo, hi)


def _check_text_values(text: str, values: Any) -> np.ndarray:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    try:
        v = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"values must be numbers, one per character, got "
                        f"{type(values).__name__}") from None
    if v.shape != (len(text),):
        raise ValueError(f"values.shape={v.shape} must be ({len(text)},): one value per character")
    return v


def html_text(text: str, values: Any, *, vmin: float | None = None, vmax: float | None = None,
              cmap: str = "RdBu_r") -> str:
    """An HTML fragment: ``text`` in a ``<pre>``, one coloured ``<span>`` per character.

    Each span's background is ``cmap(values[i])`` on ``[vmin, vmax]`` (default symmetric,
    ``±max|values|``) and its tooltip the value; a newline is a coloured span holding the
    line break.
    """
    from matplotlib.colors import to_hex

    v = _check_text_values(text, values)
    rgba, _ = _colours(v, vmin, vmax, cmap)
    parts = ['<pre class="seqjax-text" style="font-family:monospace;line-height:1.35">']
    for ch, c, val in zip(text, rgba, v):
        parts.append(f'<span style="background-color:{to_hex(c)}" title="{val:.3f}">'
                     f"{_html.escape(ch)}</span>")
    parts.append("</pre>")
    return "".join(parts)


def html_page(sections: Sequence[tuple[str, str, Any]], *, title: str = "hidden units",
              **kwargs: Any) -> str:
    """A whole HTML page of ``(heading, text, values)`` sections (see :func:`html_text`)."""
    body = [f"<h1>{_html.escape(title)}</h1>"]
    for heading, text, values in sections:
        body.append(f"<h2>{_html.escape(heading)}</h2>")
        body.append(html_text(text, values, **kwargs))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_html.escape(title)}</title></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def render_html(text: str, values: Any, path: str | os.PathLike, *, title: str = "hidden unit",
                **kwargs: Any) -> str:
    """Writes a one-section :func:`html_page` to ``path`` and returns the HTML."""
    page = html_page([(title, text, values)], title=title, **kwargs)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return page


def render_png(text: str, values: Any, path: str | os.PathLike, *, width: int = 80,
               title: str | None = None, vmin: float | None = None, vmax: float | None = None,
               cmap: str = "RdBu_r", dpi: int = 100) -> int:
    """Draws ``text`` as a grid of characters on cells coloured by ``values``, saved as PNG.

    Lines break at newlines (the newline's own cell ends the line) and at ``width`` characters.

    Returns:
      The number of coloured cells drawn (``len(text)``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    v = _check_text_values(text, values)
    rgba, (lo, hi) = _colours(v, vmin, vmax, cmap)
    cells = []  # (row, col, char)
    row = col = 0
    for ch in text:
        cells.append((row, col, ch))
        col += 1
        if ch == "\n" or col >= width:
            row, col = row + 1, 0
    rows = max(1, (cells[-1][0] + 1) if cells else 1)
    cols = max(1, min(width, max((c for _, c, _ in cells), default=0) + 1))
    fig = Figure(figsize=(0.11 * cols + 0.8, 0.2 * rows + (0.8 if title else 0.4)))
    FigureCanvasAgg(fig)  # an Agg canvas for this figure only; pyplot's backend is untouched
    ax = fig.add_subplot()
    rects = [Rectangle((c, r), 1, 1) for r, c, _ in cells]
    ax.add_collection(PatchCollection(rects, facecolors=rgba, edgecolors="none"))
    for r, c, ch in cells:
        if not ch.isspace():
            ax.text(c + 0.5, r + 0.5, ch, ha="center", va="center", family="monospace",
                    fontsize=7)
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_axis_off()
    if title:
        ax.set_title(f"{title}  (colour: {lo:+.2f} blue .. {hi:+.2f} red)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return len(rects)
