"""The learning core: how soft labels are aggregated and how models learn from them.

Pure torch (numpy for COMET's k-means), no I/O: (Enhanced) ERA and per-index means (the
server's aggregation), COMET's per-sample centroids and the client's nearest-centroid
choice, seeded sampling of clients and public indices, and the plain SGD loops every
party runs (supervised training, knowledge distillation on soft labels, prediction,
evaluation).
"""

from shared.distill.aggregate import mean_by_index
from shared.distill.clusters import kmeans_centroids, nearest_centroids
from shared.distill.era import enhanced_era, era, sharpen
from shared.distill.sampling import sample_clients, sample_public_indices
from shared.distill.training import distill, evaluate, kd_loss, predict, train_supervised

__all__ = [
    "distill",
    "enhanced_era",
    "era",
    "evaluate",
    "kd_loss",
    "kmeans_centroids",
    "mean_by_index",
    "nearest_centroids",
    "predict",
    "sample_clients",
    "sample_public_indices",
    "sharpen",
    "train_supervised",
]
