"""CIFAR ResNet-20 and -32 (He et al. 2016, §4.2): 3 stages x n basic blocks, 16/32/64 ch.

Shortcuts that change shape use option A (stride-2 subsampling plus zero channels), so
they add no parameters; the model has about 0.27 M parameters for 10 classes, as in the
paper's reference code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNet20"]


class _ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every other pixel, pad the new channels with zeros."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        half = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra_channels - half))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _ZeroPadShortcut(out_channels - in_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for small images; global average pooling makes any H, W >= 4 work.

    Args:
        input_shape: (channels, H, W).
        num_classes: C.
        blocks_per_stage: n of the 6n+2 family (3 gives ResNet-20, 5 ResNet-32).
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, blocks_per_stage: int = 3
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        in_channels = 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(_BasicBlock(in_channels, channels, stride))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        """(B, channels, H, W) images -> (B, C) logits."""
        features = self.blocks(self.stem(x))
        logits: Tensor = self.head(F.adaptive_avg_pool2d(features, 1).flatten(1))  # (B, 64) in
        return logits
