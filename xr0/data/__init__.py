"""Training data of XR0: the 32-d model layout, normalisation statistics and the dataset view of
the episode store.

The package itself imports only numpy (layout, chunks, statistics), so the policy side can use the
layout and the statistics without the store or PyAV; the dataset view is `xr0.data.dataset`.
"""

from xr0.data.chunks import ACTION_MODES, action_chunk, to_absolute
from xr0.data.layout import MODEL_DIM, SUPPORTED_NAMES, ActionLayout, LayoutError
from xr0.data.stats import NormStats, compute_stats

__all__ = ["ACTION_MODES", "action_chunk", "to_absolute", "MODEL_DIM", "SUPPORTED_NAMES",
           "ActionLayout", "LayoutError", "NormStats", "compute_stats"]
