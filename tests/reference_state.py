"""An independent NumPy (float64) reference for sequence state: masks, resets, masked outputs.

Nothing here imports jaxlstm. It extends ``reference.py`` (which it reuses only
for the merge of two directions) with the per-step semantics of
docs/sequence-state.md, written as plain per-sequence loops over *segments*
rather than as per-step flags, so that it does not mirror the library's loop:

* a step **counts** when its ``mask`` entry is True and ``t < seq_length``; a
  step that does not count leaves the carry as it was and outputs zeros
  (``masked_output="zeros"``) or the carry's ``h`` (``"previous"``);
* ``resets`` marks the first step of a **segment**: a row is cut before every
  marked step. Forward, the first segment starts from the initial carry (from
  the reset carry if step 0 itself is marked), every later one from the reset
  carry. Backward, each segment is read from its own end to its start; the
  last segment (the first one read) starts from the initial carry, every
  earlier one from the reset carry;
* the final carry is the carry after the last step read: step T - 1 forward,
  step 0 backward.
"""

from __future__ import annotations

import math

import numpy as np
from reference import ref_merge


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def hard_sigmoid(z):
    """Keras 3 / JAX: relu6(z + 3) / 6."""
    return np.minimum(np.maximum(z + 3.0, 0.0), 6.0) / 6.0


def relu(z):
    return np.maximum(z, 0.0)


def cell(w_ih, w_hh, b, h, c, x, gate_fn=sigmoid, activation_fn=np.tanh):
    """One step of one sequence, float64: ``(h', c')``."""
    hidden = w_hh.shape[0]
    z = x @ w_ih + h @ w_hh + b
    i, f, g, o = (z[k * hidden : (k + 1) * hidden] for k in range(4))
    i, f, g, o = gate_fn(i), gate_fn(f), activation_fn(g), gate_fn(o)
    c = f * c + i * g
    return o * activation_fn(c), c


def segments(resets_row, time):
    """``[(start, end), ...]`` covering ``range(time)``, cut before every marked step."""
    starts = sorted({0} | {t for t in range(time) if resets_row[t]})
    return list(zip(starts, starts[1:] + [time], strict=True))


def _rows(value, n, shape, default):
    """``value`` (or ``default``) broadcast to ``(*batch, *shape)`` and flattened to ``(n, *shape)``, float64/bool."""
    if value is None:
        return np.broadcast_to(np.asarray(default), (n, *shape))
    return np.asarray(value).reshape(n, *shape)


def ref_lstm_state(
    w_ih,
    w_hh,
    b,
    xs,
    h0=None,
    c0=None,
    *,
    mask=None,
    seq_lengths=None,
    resets=None,
    reset_h=None,
    reset_c=None,
    masked_output="zeros",
    reverse=False,
    gate_fn=sigmoid,
    activation_fn=np.tanh,
):
    """One layer, one direction over ``xs`` ``(*batch, T, D)``.

    ``h0``/``c0``: the initial carry ``(*batch, H)`` (zeros by default);
    ``reset_h``/``reset_c``: what a reset restarts from (the initial carry by
    default). Returns ``(h_final, c_final, hs)``, float64, shapes
    ``(*batch, H)``, ``(*batch, H)``, ``(*batch, T, H)``.
    """
    if masked_output not in ("zeros", "previous"):
        raise ValueError(masked_output)
    w_ih, w_hh, b, xs = (np.asarray(a, np.float64) for a in (w_ih, w_hh, b, xs))
    hidden = w_hh.shape[0]
    batch_shape, (time, features) = xs.shape[:-2], xs.shape[-2:]
    n = math.prod(batch_shape)
    xs = xs.reshape(n, time, features)
    h0 = _rows(h0, n, (hidden,), 0.0).astype(np.float64)
    c0 = _rows(c0, n, (hidden,), 0.0).astype(np.float64)
    reset_h = h0 if reset_h is None else _rows(reset_h, n, (hidden,), 0.0).astype(np.float64)
    reset_c = c0 if reset_c is None else _rows(reset_c, n, (hidden,), 0.0).astype(np.float64)
    mask = _rows(mask, n, (time,), True).astype(bool)
    lengths = _rows(seq_lengths, n, (), time).astype(np.int64)
    resets = _rows(resets, n, (time,), False).astype(bool)

    hs = np.zeros((n, time, hidden))
    h_final, c_final = np.zeros((n, hidden)), np.zeros((n, hidden))
    for row in range(n):
        pieces = segments(resets[row], time)
        if reverse:
            order = [(s, e, k == 0) for k, (s, e) in enumerate(reversed(pieces))]
        else:
            order = [(s, e, k == 0 and not resets[row][0]) for k, (s, e) in enumerate(pieces)]
        for start, end, from_initial in order:
            h, c = (h0[row], c0[row]) if from_initial else (reset_h[row], reset_c[row])
            steps = range(end - 1, start - 1, -1) if reverse else range(start, end)
            for t in steps:
                if mask[row, t] and t < lengths[row]:
                    h, c = cell(w_ih, w_hh, b, h, c, xs[row, t], gate_fn, activation_fn)
                    hs[row, t] = h
                else:
                    hs[row, t] = h if masked_output == "previous" else 0.0
        h_final[row], c_final[row] = h, c
    return (
        h_final.reshape(*batch_shape, hidden),
        c_final.reshape(*batch_shape, hidden),
        hs.reshape(*batch_shape, time, hidden),
    )


def ref_stack_state(stack_weights, xs, carries=None, reset_carries=None, *, merge="concat", reverse=False, **options):
    """A stack, ``[layer][direction] -> (w_ih, w_hh, b)``; direction 1 (or every layer with ``reverse``) backward.

    ``carries`` / ``reset_carries``: optional ``[layer][direction] -> (h, c)``.
    ``options`` (mask, seq_lengths, resets, masked_output, gate_fn,
    activation_fn) apply to every layer and direction. Returns ``(finals, hs)``
    with ``finals[layer][direction] = (h, c)`` and the last layer's merged
    outputs.
    """
    hs = np.asarray(xs, np.float64)
    finals = []
    for layer, directions in enumerate(stack_weights):
        outputs, layer_finals = [], []
        for direction, (w_ih, w_hh, b) in enumerate(directions):
            h0, c0 = (None, None) if carries is None else carries[layer][direction]
            rh, rc = (None, None) if reset_carries is None else reset_carries[layer][direction]
            h, c, out = ref_lstm_state(
                w_ih, w_hh, b, hs, h0, c0, reset_h=rh, reset_c=rc, reverse=reverse or direction == 1, **options
            )
            outputs.append(out)
            layer_finals.append((h, c))
        hs = outputs[0] if len(outputs) == 1 else ref_merge(outputs[0], outputs[1], merge)
        finals.append(tuple(layer_finals))
    return tuple(finals), hs
