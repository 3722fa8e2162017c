"""Small models for the offline grayscale tasks: a two-conv CNN and a two-layer MLP."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLP", "SmallCNN"]


class SmallCNN(nn.Module):
    """conv32-pool-conv64-pool-fc128-fc(C), for 28x28, 32x32 and 8x8 inputs alike.

    3x3 convolutions with padding keep the size, each pooling halves it, so the flatten
    size follows from the input shape.

    Args:
        input_shape: (channels, H, W); H and W must be at least 4.
        num_classes: C, the number of logits.

    Raises:
        ValueError: when H or W is below 4.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        if height < 4 or width < 4:
            raise ValueError(f"cnn needs images of at least 4x4, got {height}x{width}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, channels, H, W) images -> (B, C) logits."""
        out: Tensor = self.classifier(self.features(x))
        return out


class MLP(nn.Module):
    """Flatten, one hidden layer of ReLU units (256 by default), then C logits.

    Args:
        input_shape: (channels, H, W).
        num_classes: C.
        hidden: the width of the hidden layer.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 256
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, channels, H, W) images -> (B, C) logits."""
        out: Tensor = self.layers(x)
        return out
