"""The fork server's last import: it warms torch up and names the process.

Importing this module runs every model once on a few tiny images. A process's first
training step costs about 1.3 s more than the next ones (kernel selection, lazily built
operator tables), paid by every worker and the aggregator in their first round.
``scarlet up``'s fork server (:mod:`scarlet.children`) imports this module after the
services and before it forks any child, so the children start warm; the fork server is
the only importer. It then shows as ``python -m scarlet.children (fork server)`` in
``ps``, not as multiprocessing's command line, which names the preloaded services.

It runs on one intra-op thread, which makes torch create no thread pool: a fork would
not carry the pool's threads over, and each child sets its own thread count. The global
random states are put back, so a warm child draws exactly what a fresh process would.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import torch

from scarlet.children import retitle
from shared.distill.training import distill, evaluate, predict, train_supervised
from shared.models import MODELS, build_model

__all__: list[str] = []


def _warm_up() -> None:
    torch.set_num_threads(1)
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        for name in MODELS:
            for shape in ((1, 8, 8), (3, 8, 8)):
                images = torch.zeros(8, *shape)
                labels = torch.arange(8) % 2
                model = build_model(name, shape, 2, seed=0)
                generator = torch.Generator().manual_seed(0)
                train_supervised(
                    model, images, labels, epochs=1, batch_size=4, lr=0.1, generator=generator
                )
                distill(model, images, torch.full((8, 2), 0.5), epochs=1, batch_size=4, lr=0.1)
                predict(model, images)
                evaluate(model, images, labels)
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


_warm_up()
retitle([sys.executable, "-m", "scarlet.children", "(fork server)"])
