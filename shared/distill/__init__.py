"""The math core: aggregation, (Enhanced) ERA and index sampling. Pure torch, no I/O."""

from shared.distill.aggregate import mean_by_index
from shared.distill.era import enhanced_era, era, sharpen
from shared.distill.sampling import sample_clients, sample_public_indices

__all__ = [
    "enhanced_era",
    "era",
    "mean_by_index",
    "sample_clients",
    "sample_public_indices",
    "sharpen",
]
