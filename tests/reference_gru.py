"""An independent NumPy (float64) reference for the GRU, written from PyTorch's equations.

Nothing here imports jaxlstm. Gates packed [r, z, n] along 3H::

    r = σ(x W_ir + b_ir + h W_hr + b_hr)
    z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))
    h' = (1 − z) ⊙ n + z ⊙ h

With ``seq_lengths`` steps t >= length leave h unchanged and output zeros;
``reverse`` reads each sequence from its own last valid step back to step 0.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def ref_gru_cell(w_ih, w_hh, b_ih, b_hh, h, x):
    """One step for one sequence: x (D,), h (H,) -> h' (H,), in float64."""
    w_ih, w_hh, b_ih, b_hh, h, x = (np.asarray(a, np.float64) for a in (w_ih, w_hh, b_ih, b_hh, h, x))
    hidden = h.shape[-1]
    a, u = x @ w_ih + b_ih, h @ w_hh + b_hh
    r = _sigmoid(a[:hidden] + u[:hidden])
    z = _sigmoid(a[hidden : 2 * hidden] + u[hidden : 2 * hidden])
    n = np.tanh(a[2 * hidden :] + r * u[2 * hidden :])
    return (1.0 - z) * n + z * h


def ref_gru(w_ih, w_hh, b_ih, b_hh, xs, h0=None, seq_lengths=None, reverse=False):
    """``(final_h (B, H), hs (B, T, H))`` for batch-first ``xs`` (B, T, D), per sequence, per step."""
    xs = np.asarray(xs, np.float64)
    batch, time, _ = xs.shape
    hidden = np.asarray(w_hh).shape[0]
    finals, outputs = np.zeros((batch, hidden)), np.zeros((batch, time, hidden))
    for s in range(batch):
        h = np.zeros(hidden) if h0 is None else np.asarray(h0[s], np.float64)
        length = time if seq_lengths is None else int(seq_lengths[s])
        order = range(length - 1, -1, -1) if reverse else range(length)
        for t in order:
            h = ref_gru_cell(w_ih, w_hh, b_ih, b_hh, h, xs[s, t])
            outputs[s, t] = h
        finals[s] = h
    return finals, outputs
