"""Weight initialisation shared by the zoo's convolutional networks."""

from __future__ import annotations

from torch import nn

__all__ = ["init_weights"]


def init_weights(model: nn.Module, *, linear_std: float | None = 0.01) -> None:
    """Initialise ``model`` in place, the torchvision way.

    Convolutions: Kaiming-normal (``fan_out``, ReLU gain), zero bias; batch norm:
    weight 1, bias 0; linear layers: ``N(0, linear_std)`` weights (torch's default
    when ``linear_std`` is None) and zero bias.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, std=linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
