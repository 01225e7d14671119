"""ibtools' own exception types: the pipeline and the command line decide by what an error
means, not by its Python type.

Two families matter to a caller:

- :class:`InputError` -- what the caller gave is wrong (an argument, a setting, a path).  The
  analysis raises it at once and the CLI reports it as a user error (exit code 2).  It is a
  ``ValueError`` (and :class:`InputTypeError` also a ``TypeError``), so code written as
  ``except ValueError`` keeps working.
- :class:`EstimatorFailed` -- an estimator could not compute one quantity on this data (it
  refuses the pair, or the numbers broke down).  :func:`ibtools.analyze` turns it into a NaN
  row with a flag and a warning and goes on; a direct call raises it.  Also a
  ``ValueError``, as the messages it replaces were.

A plain ``TypeError``, ``AttributeError`` or ``NameError`` from inside an estimator is a bug
and is never turned into a NaN row.
"""

from __future__ import annotations

import torch

__all__ = [
    "ESTIMATOR_FAILURES",
    "EstimatorFailed",
    "EstimatorRefused",
    "IbtoolsError",
    "InputError",
    "InputTypeError",
    "NeuralTrainingError",
    "NumericalFailure",
    "ResourceExceeded",
]


class IbtoolsError(Exception):
    """Base of every error ibtools raises on purpose."""


class InputError(IbtoolsError, ValueError):
    """An argument or setting the caller gave is not accepted; the message names the
    argument, the value and what is accepted."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class EstimatorFailed(IbtoolsError, ValueError):
    """An estimator could not compute a quantity on the data it was given."""


class EstimatorRefused(EstimatorFailed):
    """The data is outside what the estimator handles (too few rows, non-finite values, a
    pair of variables of kinds it does not take)."""


class NumericalFailure(EstimatorFailed, ArithmeticError, RuntimeError):
    """The computation broke down (a non-finite value, an overflow); also a
    ``RuntimeError``, which the estimators raised before."""


class NeuralTrainingError(EstimatorFailed, RuntimeError):
    """Critic training failed at every learning rate tried (non-finite or absurd held-out
    values).  A ValueError because a setting (``lr``, the critic, the inputs' scale) is the
    cause, so the CLI reports it as a user error; a RuntimeError for callers that catch
    training failures as such."""


class ResourceExceeded(IbtoolsError, MemoryError):
    """A computation needs more memory than the budget or the device allows."""

    def __reduce__(self):
        # MemoryError has its own C-level __new__, so the __newobj__ form of pickling
        # ("MemoryError.__new__(ResourceExceeded) is not safe") can fail; rebuild by calling
        # the class, as a Dask worker's answer to the driver needs.
        return type(self), self.args, (self.__dict__ or None)


#: What :func:`ibtools.analyze` turns into a NaN row with a flag: ibtools' own estimator
#: failures, Python's arithmetic errors (overflow, division by zero: numerical by nature),
#: running out of host or device memory, and a singular matrix in torch's linear algebra.
ESTIMATOR_FAILURES = (EstimatorFailed, ArithmeticError, MemoryError, torch.OutOfMemoryError,
                      torch.linalg.LinAlgError)

