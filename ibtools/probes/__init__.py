"""Probing models: load checkpoints, load analysis data, capture layer activations.

>>> from ibtools.probes import load_model, load_dataset, capture_activations
>>> model, info = load_model("run/ckpt.pt")                       # doctest: +SKIP
>>> data = load_dataset("digits", model=model)                     # doctest: +SKIP
>>> acts = capture_activations(model, data, layers="norms", max_rows=1000)  # doctest: +SKIP
>>> acts.layers, acts[acts.layers[0]].shape, acts.y.shape          # doctest: +SKIP
"""

from ibtools.probes.activations import Activations
from ibtools.probes.architectures import build_architecture
from ibtools.probes.capture import capture_activations, hooked
from ibtools.probes.checkpoints import (
    UnsafePickleError,
    load_model,
    pickle_globals,
    read_checkpoint,
    unwrap_state_dict,
)
from ibtools.probes.datasets import (
    AnalysisData,
    BatchStream,
    digits_split,
    infer_kind,
    load_dataset,
)
from ibtools.probes.layers import is_norm_layer, select_layers
from ibtools.probes.reservoir import RowReservoir

__all__ = ["Activations", "AnalysisData", "BatchStream", "RowReservoir", "UnsafePickleError",
           "build_architecture", "capture_activations", "digits_split", "hooked", "infer_kind",
           "is_norm_layer", "load_dataset", "load_model", "pickle_globals", "read_checkpoint",
           "select_layers", "unwrap_state_dict"]
