"""How jaxlstm writes numbers and shapes in text: the walk-through, the diagram and the summary table.

>>> format_count(5248), format_shape((4, 32)), format_shape((128,))
('5,248', '(4, 32)', '(128,)')
"""

from __future__ import annotations

__all__ = ["format_count", "format_shape"]


def format_count(n: int) -> str:
    """``5248`` → ``"5,248"``."""
    return f"{n:,}"


def format_shape(shape) -> str:
    """``(4, 32)`` → ``"(4, 32)"``; ``(128,)`` → ``"(128,)"``; a list is written as the tuple it stands for."""
    return str(tuple(shape))
