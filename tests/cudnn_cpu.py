"""Test-only: cuDNN's LSTM binding (``jax.experimental.rnn``) made runnable on CPU.

``jax.experimental.rnn`` lowers its two primitives, ``rnn_fwd`` and ``rnn_bwd``,
only for CUDA and ROCm, and asks ``jaxlib.gpu_rnn`` (absent on a CPU-only
jaxlib) for the size of cuDNN's reserve space. Here:

* ``rnn_fwd`` gets a CPU lowering that runs ``jax.experimental.rnn.lstm_ref``
  (JAX's own ``lax.scan`` reference of the cuDNN LSTM) on the unpacked
  weights, and ``rnn_bwd`` one that runs ``lstm_ref``'s VJP;
* ``simulated_gpu(monkeypatch)`` makes jaxlstm's dispatch see a CUDA GPU with the
  binding: ``jax.experimental.rnn.gpu_rnn`` becomes a stand-in that answers the
  workspace-size query with a small reserve space, ``jaxlstm.cudnn._platform``
  says ``"cuda"``, and CPU joins the platforms where jaxlstm's primitives
  lower to the binding.

So ``jl.lstm(..., backend="cudnn")`` runs end to end here, through the same
primitives, packing and fix-ups as on a GPU; only the kernel is lstm_ref.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
from jax.experimental import rnn
from jax.interpreters import mlir

import jaxlstm.cudnn as cudnn

RESERVE_FLOATS = 3  # the stand-in reserve space: any size works, nothing reads it on CPU
CALLS = {"rnn_fwd": 0, "rnn_bwd": 0}  # how often each CPU lowering was used (the binding really ran)
LAST_ALLOW_TF32 = None  # the cudnn_allow_tf32 the binding's forward was last lowered with


def _reference(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size, num_layers, dropout, bidirectional):
    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(
        x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size, num_layers, dropout, bidirectional
    )


def _forward(x, h_0, c_0, weights, seq_lengths, *, cudnn_allow_tf32, **static):
    global LAST_ALLOW_TF32
    CALLS["rnn_fwd"] += 1
    LAST_ALLOW_TF32 = cudnn_allow_tf32
    y, h_n, c_n = _reference(x, h_0, c_0, weights, seq_lengths, **static)
    return y, h_n, c_n, jnp.zeros((RESERVE_FLOATS,), jnp.float32)


def _backward(dy, dh_n, dc_n, x, h_0, c_0, weights, y, reserve, seq_lengths, *, cudnn_allow_tf32, **static):
    CALLS["rnn_bwd"] += 1
    _, pullback = jax.vjp(lambda *a: _reference(*a, seq_lengths, **static), x, h_0, c_0, weights)
    return pullback((dy, dh_n, dc_n))


mlir.register_lowering(rnn.rnn_fwd_p, mlir.lower_fun(_forward, multiple_results=True), platform="cpu")
mlir.register_lowering(rnn.rnn_bwd_p, mlir.lower_fun(_backward, multiple_results=True), platform="cpu")


def _sizes(input_size, hidden_size, num_layers, batch_size, max_seq_length, dropout, bidirectional, allow_tf32):
    return 0, RESERVE_FLOATS  # (workspace, reserve space): jax.experimental.rnn makes (reserve,) float32 of it


STUB_GPU_RNN = types.SimpleNamespace(compute_rnn_workspace_reserve_space_sizes=_sizes)


def simulated_gpu(monkeypatch, *, binding_lowers_on_cpu: bool = True) -> None:
    """Makes jaxlstm's dispatch (and the binding's shape rules) see a CUDA GPU with cuDNN, for one test.

    With ``binding_lowers_on_cpu=False`` the primitives lower on CPU as on any platform without the
    binding: to jaxlstm's XLA loop.
    """
    monkeypatch.setattr(rnn, "gpu_rnn", STUB_GPU_RNN)
    monkeypatch.setattr(cudnn, "_platform", lambda: "cuda")
    if binding_lowers_on_cpu:
        monkeypatch.setattr(cudnn, "BINDING_PLATFORMS", cudnn.BINDING_PLATFORMS | {"cpu"})
