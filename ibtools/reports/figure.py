"""A matplotlib Figure that shows itself in a notebook.

The report figures are built without pyplot (no global state), and Jupyter shows such a
Figure only when pyplot's inline backend has registered its formatter (after ``import
matplotlib.pyplot`` or ``%matplotlib inline``); in a fresh kernel it prints
``<Figure size 1100x700>``.  :class:`NotebookFigure` renders itself as PNG through IPython's
``_repr_png_`` protocol, so a returned figure displays whatever the kernel imported, and is an
ordinary ``matplotlib.figure.Figure`` everywhere else.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

#: Resolution of the notebook preview (savefig still takes any dpi).
NOTEBOOK_DPI = 100


class NotebookFigure(Figure):
    """A :class:`matplotlib.figure.Figure` with a PNG representation for IPython."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=NOTEBOOK_DPI, bbox_inches="tight")
        return buffer.getvalue()
