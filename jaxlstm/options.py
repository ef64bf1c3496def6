"""The options of ``jaxlstm.lstm`` and ``jaxlstm.stacked_lstm``: each declared, documented and validated here, once.

The records, each extending the one before with its own options:

* ``jaxlstm.SequenceOptions`` (``jaxlstm.engine``): how a layer reads its
  sequences (``seq_lengths``, ``mask``, ``resets``, ``reset_carry``,
  ``masked_output``, ``reverse``, ``unroll``, ``gradient``, ``checkpoint_every``);
* ``DrawOptions``: and the random draws' ``dropout_key`` and ``deterministic``;
* ``LSTMOptions`` (``jaxlstm.lstm``): and the LSTM cell's and the backend's
  (``LSTMSettings``);
* ``RNNStackOptions`` (``jaxlstm.stacked_rnn``, any cell): and the stack's
  (``StackSettings``: ``merge``, ``dropout``; and ``reset_carries``);
* ``StackOptions`` (``jaxlstm.stacked_lstm``): both of the last two.

A layer's fields are the settings among them (``SequenceSettings``,
``LSTMSettings``, ``StackSettings``), which ``jaxlstm.layer`` inherits rather
than declares again; the per-call arrays (``seq_lengths``, ``mask``,
``resets``) are a module call's arguments.

The functions keep their keyword arguments (``jl.stacked_lstm(stack, xs,
seq_lengths=..., dropout=0.2)``) and build the record with ``build``, which
refuses a name that is not an option with a TypeError listing the valid ones.
The records are frozen and hashable where their fields are; every field is
checked on construction (``_checks``), so a record in hand is a valid one.

>>> import jax.numpy as jnp
>>> options = StackOptions.build({"seq_lengths": jnp.array([3, 1]), "dropout": 0.5}, "example")
>>> options.dropout, options.merge, options.backend, options.training
(0.5, 'concat', 'auto', False)
>>> StackOptions.build({"seq_length": 3}, "example")  # doctest: +ELLIPSIS
Traceback (most recent call last):
TypeError: example got an unexpected keyword argument 'seq_length' ...; its options are seq_lengths, mask, ...
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from . import _checks
from .cell import Activation
from .engine import SequenceData, SequenceOptions
from .variants import LSTMVariant, check_variant, is_training

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "MERGE_MODES",
    "DrawOptions",
    "LSTMOptions",
    "LSTMSettings",
    "RNNStackOptions",
    "StackOptions",
    "StackSettings",
    "option_names",
    "check_names",
    "build",
    "takes",
    "takes_call_data",
    "call_data_names",
    "check_call_data",
]

BACKENDS = ("auto", "xla", "cudnn")
"""The values of ``backend``: cuDNN where it computes a call exactly, always jaxlstm's XLA loop, or cuDNN."""
PRECISIONS = ("float32", "tf32")
"""The values of ``cudnn_precision``: the matmuls' precision on cuDNN."""
MERGE_MODES = ("concat", "sum", "mul", "ave")
"""How two directions' outputs combine, as Keras' ``Bidirectional(merge_mode=...)``."""

_Record = TypeVar("_Record")
_Function = TypeVar("_Function", bound=Callable[..., Any])


def option_names(record: type) -> tuple[str, ...]:
    """The option names of a record class (its fields, but those it refuses), in declaration order."""
    refused = getattr(record, "REFUSED", {})
    return tuple(field.name for field in dataclasses.fields(record) if field.name not in refused)


def check_names(record: type, options: Mapping[str, Any], where: str) -> None:
    """A TypeError for a name in ``options`` that is not one of ``record``'s options, naming it and
    listing the valid ones (``where``: the function the options were given to); a variant option
    given flat (``peepholes=True``) is pointed to ``variant=jl.LSTMVariant(peepholes=True)``."""
    names = option_names(record)
    refused = getattr(record, "REFUSED", {})
    variant_names = {field.name for field in dataclasses.fields(LSTMVariant)}
    for name, value in options.items():
        if name in refused:
            raise TypeError(f"{where} got {name}=...: {refused[name]}")
        if name in variant_names and name not in names:
            raise TypeError(
                f"{where} got {name}={value!r}: the LSTM variant options are one option now, "
                f"write variant=jl.LSTMVariant({name}={value!r}) "
                "(see docs/variants.md, or run jaxlstm docs variants)"
            )
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(
            f"{where} got an unexpected keyword argument {unknown[0]!r} (unexpected keyword arguments {unknown}); "
            f"its options are {', '.join(names)} (see {record.__module__}.{record.__name__})"
        )


def build(record: type[_Record], options: Mapping[str, Any], where: str) -> _Record:
    """``record(**options)``, after ``check_names``: a name that is not an option is a TypeError."""
    check_names(record, options, where)
    return record(**options)


def takes(record: type) -> Callable[[_Function], _Function]:
    """A decorator for a function that takes ``record``'s options as ``**options``: its signature, as
    ``help`` and ``inspect.signature`` show it, lists them as keyword-only parameters with their
    defaults and types, generated from the record (not written again)."""

    def decorate(function: _Function) -> _Function:
        signature = inspect.signature(function)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        names = option_names(record)
        options = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(record)
            if f.name in names
        ]
        setattr(function, "__signature__", signature.replace(parameters=own + options))  # noqa: B010
        return function

    return decorate


# A module's call takes SequenceData's arrays but reset_carry: a layer restarts from its own initial carries.
_NOT_A_CALL_ARGUMENT = frozenset({"reset_carry"})


def call_data_names() -> tuple[str, ...]:
    """The per-call arrays a layer module's call takes (``seq_lengths``, ``mask``, ``resets``): the fields of
    ``jaxlstm.engine.SequenceData`` but ``reset_carry``."""
    return tuple(name for name in option_names(SequenceData) if name not in _NOT_A_CALL_ARGUMENT)


def check_call_data(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A module call's ``**data``: every name one of ``call_data_names()`` (else the TypeError a Python call
    gives, listing them), the missing ones ``None``."""
    names = call_data_names()
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise TypeError(
            f"{where} got an unexpected keyword argument {unknown[0]!r}; its sequence arguments are "
            f"{', '.join(names)} (jaxlstm.engine.SequenceData)"
        )
    return {name: data.get(name) for name in names}


def _attribute_docs(record: type) -> dict[str, list[str]]:
    """``{field: its description's lines}`` from the ``Attributes:`` section of ``record``'s docstring."""
    docs: dict[str, list[str]] = {}
    current = None
    for line in (inspect.getdoc(record) or "").partition("Attributes:\n")[2].splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            current = entry.group(1)
            docs[current] = [entry.group(2)]
        elif current is not None and line.startswith("        "):
            docs[current].append(line.strip())
        elif line.strip():
            break
    return docs


def takes_call_data(function: _Function) -> _Function:
    """A decorator for a layer module's ``__call__(self, x, *, ..., **data)``: its signature, as ``help`` and
    ``inspect.signature`` show it, lists ``call_data_names()`` as keyword-only parameters after its own, with
    the types of ``jaxlstm.engine.SequenceData``; and the docstring line ``<name>, ...: ...SequenceData...``
    (one line naming them) becomes one entry per name, its description from ``SequenceData``'s. Generated
    from the record, not written again."""
    names = call_data_names()
    fields = {f.name: f for f in dataclasses.fields(SequenceData)}
    signature = inspect.signature(function)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    data = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=fields[name].type)
        for name in names
    ]
    setattr(function, "__signature__", signature.replace(parameters=own + data))  # noqa: B010
    docs, lines, replaced = _attribute_docs(SequenceData), [], None
    for line in (function.__doc__ or "").splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if replaced is not None and len(indent) > len(replaced) and line.strip():
            continue  # the replaced entry's continuation lines
        replaced = None
        if line.strip().startswith(f"{', '.join(names)}:"):
            replaced = indent
            for name in names:
                first, *rest = docs[name]
                lines += [f"{indent}{name}: {first}", *(f"{indent}    {more}" for more in rest)]
        else:
            lines.append(line)
    function.__doc__ = "\n".join(lines)
    return function


@dataclass
class LSTMSettings:
    """The LSTM cell's and the backend's settings: the options of ``LSTMOptions`` that an LSTM layer holds as
    fields (``jaxlstm.layer.LayerFields`` inherits them). Declared here once, checked by ``LSTMOptions``.

    Attributes:
        gate_fn: the gates' activation σ (default ``jax.nn.sigmoid``; Keras' ``recurrent_activation``).
        activation_fn: the candidate's and cell output's activation (default ``jnp.tanh``; Keras' ``activation``).
        variant: a ``jaxlstm.LSTMVariant`` every cell is (projection, peepholes, layer norm, CIFG, forget
            bias, cell clipping, dropouts, zoneout; docs/variants.md); ``None``: the plain LSTM.
        backend: ``"auto"`` (cuDNN on a CUDA GPU where it computes the call exactly, else jaxlstm's XLA
            loop), ``"xla"`` or ``"cudnn"`` (or a ValueError saying why not); docs/gpu.md.
        cudnn_precision: the matmuls' precision on cuDNN, ``"float32"`` or ``"tf32"`` (~1e-3 relative).
    """

    gate_fn: Activation = jax.nn.sigmoid
    activation_fn: Activation = jnp.tanh
    variant: LSTMVariant | None = None
    backend: str = "auto"
    cudnn_precision: str = "float32"


@dataclass
class StackSettings:
    """A stack's settings: the options of ``RNNStackOptions`` that a layer holds as fields
    (``jaxlstm.layer.RecurrentLayerFields`` inherits them). Declared here once, checked by ``RNNStackOptions``.

    Attributes:
        merge: how the two directions' outputs combine: ``"concat"`` (F = 2H), ``"sum"``, ``"mul"``,
            ``"ave"`` (F = H).
        dropout: the rate of dropout on each layer's output but the last (PyTorch's ``dropout``), in a
            training call.
    """

    merge: str = "concat"
    dropout: float = 0.0


@dataclass(frozen=True)
class DrawOptions(SequenceOptions):
    """``jaxlstm.SequenceOptions``' and the two options of random draws (dropout, zoneout), checked on
    construction: the base of ``LSTMOptions`` and ``RNNStackOptions``.

    Attributes:
        dropout_key: a PRNG key for the random masks (dropout, zoneout) of a training call.
        deterministic: ``True``: no random draws (dropout off, zoneout its expectation); ``False``: draw
            masks from ``dropout_key`` (required when something draws); ``None``: random exactly when a
            ``dropout_key`` is given (``training``).
    """

    dropout_key: PRNGKeyArray | None = None
    deterministic: bool | None = None

    REFUSED: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        super().__post_init__()
        key = _checks.prng_key(self.dropout_key, "dropout_key", allow_none=True)
        object.__setattr__(self, "dropout_key", key)
        object.__setattr__(self, "deterministic", _checks.flag(self.deterministic, "deterministic", allow_none=True))

    @property
    def training(self) -> bool:
        """Whether the call may draw random masks (``jaxlstm.variants.is_training``)."""
        return is_training(self.dropout_key, self.deterministic)

    def require_key(self, draws: bool) -> None:
        """The rule, once: ``deterministic=False`` for a call that ``draws`` masks needs a ``dropout_key``."""
        if draws and self.deterministic is False and self.dropout_key is None:
            raise ValueError("deterministic=False needs a dropout_key (a jax.random key) for the dropout masks")

    @classmethod
    def build(cls: type[_Record], options: Mapping[str, Any], where: str) -> _Record:
        """``build(cls, options, where)``: the record, or a TypeError naming an unknown option."""
        return build(cls, options, where)

    def replace(self: _Record, **changes) -> _Record:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)  # pyright: ignore[reportArgumentType]

    def fields_of(self, record: type) -> dict[str, Any]:
        """This record's values of ``record``'s options (a record this one extends), ``{name: value}``."""
        return {name: getattr(self, name) for name in option_names(record)}


# Frozen over the non-frozen LSTMSettings: allowed at run time since DrawOptions is frozen; pyright refuses it.
@dataclass(frozen=True)  # pyright: ignore[reportGeneralTypeIssues]
class LSTMOptions(LSTMSettings, DrawOptions):
    """The options of ``jaxlstm.lstm``, checked on construction: ``DrawOptions``' (``jaxlstm.SequenceOptions``'
    and ``dropout_key``, ``deterministic``) and the cell's and backend's of ``LSTMSettings`` (``gate_fn``,
    ``activation_fn``, ``variant``, ``backend``, ``cudnn_precision``), each documented there."""

    def __post_init__(self):
        super().__post_init__()
        _checks.activation(self.gate_fn, "gate_fn")
        _checks.activation(self.activation_fn, "activation_fn")
        check_variant(self.variant, allow_none=True)
        _checks.one_of(self.backend, BACKENDS, "backend")
        _checks.one_of(self.cudnn_precision, PRECISIONS, "cudnn_precision")


# Frozen over the non-frozen StackSettings: allowed at run time since DrawOptions is frozen; pyright refuses it.
@dataclass(frozen=True)  # pyright: ignore[reportGeneralTypeIssues]
class RNNStackOptions(StackSettings, DrawOptions):
    """The options of ``jaxlstm.stacked_rnn`` (a stack of any cell): ``DrawOptions``' for every layer and
    direction, the stack's settings of ``StackSettings`` (``merge``, ``dropout``) and ``reset_carries``.

    ``reset_carry`` is ``jaxlstm.rnn``'s: a stack takes ``reset_carries``.

    Attributes:
        reset_carries: what each layer and direction restarts from at ``resets``, nested
            ``[layer][direction]`` → the cell's carry; by default the initial carries.
    """

    reset_carries: Any = None

    REFUSED: ClassVar[dict[str, str]] = {
        "reset_carry": "a stack restarts each layer and direction from reset_carries, nested [layer][direction]"
    }

    def __post_init__(self):
        if self.reset_carry is not None:
            raise TypeError(f"reset_carry=... is not a stack's option: {self.REFUSED['reset_carry']}")
        super().__post_init__()
        _checks.one_of(self.merge, MERGE_MODES, "merge")
        object.__setattr__(self, "dropout", _checks.rate(self.dropout, "dropout"))


@dataclass(frozen=True)
class StackOptions(RNNStackOptions, LSTMOptions):
    """The options of ``jaxlstm.stacked_lstm``: ``RNNStackOptions``' (the stack's) and ``LSTMOptions``' (for
    every layer and direction), each declared once, in the record that owns it."""
