"""Training data of XR0: the 32-d model layout, normalisation statistics and the dataset view of
the episode store."""

from xr0.data.chunks import ACTION_MODES, action_chunk, to_absolute
from xr0.data.dataset import DatasetError, EpisodeDataset, collate
from xr0.data.layout import MODEL_DIM, SUPPORTED_NAMES, ActionLayout, LayoutError
from xr0.data.stats import NormStats, compute_stats

__all__ = ["ACTION_MODES", "action_chunk", "to_absolute", "DatasetError", "EpisodeDataset",
           "collate", "MODEL_DIM", "SUPPORTED_NAMES", "ActionLayout", "LayoutError", "NormStats",
           "compute_stats"]
