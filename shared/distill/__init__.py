"""The learning core: how soft labels are aggregated and how models learn from them.

Pure torch, no I/O: (Enhanced) ERA and per-index means (the server's aggregation),
seeded sampling of clients and public indices, and the plain SGD loops every party runs
(supervised training, knowledge distillation on soft labels, prediction, evaluation).
"""

from shared.distill.aggregate import mean_by_index
from shared.distill.era import enhanced_era, era, sharpen
from shared.distill.sampling import sample_clients, sample_public_indices
from shared.distill.training import distill, evaluate, kd_loss, predict, train_supervised

__all__ = [
    "distill",
    "enhanced_era",
    "era",
    "evaluate",
    "kd_loss",
    "mean_by_index",
    "predict",
    "sample_clients",
    "sample_public_indices",
    "sharpen",
    "train_supervised",
]
