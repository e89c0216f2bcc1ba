"""Small fully convolutional networks for atom-column detection (torch).

:class:`AtomDetector` is a centre-heatmap detector (CenterNet-style, with sub-pixel Gaussian
blobs, as in seed 003) rather than a YOLO-style box regressor (seed 000).  Atom columns are dense
(hundreds to tens of thousands per image), tiny (a few px), often touching or overlapping, and all
of nearly one shape: a heatmap needs no anchors, no non-maximum suppression between touching
boxes, and its local maxima give sub-pixel positions directly; the box size is a single extra
channel read at each peak.

Layout (``channels = (16, 32, 48, 64)``, ``classes = 2``)::

    image (N,1,H,W) --PixelUnshuffle(2)--> (N,4,H/2,W/2)          all convolutions run at <= 1/2
    encoder: 2 x [3x3 conv + BN + ReLU] per level, max-pool between levels (H/2 ... H/16)
    decoder: 2x2 transposed conv up, concat skip, 1x1 fusion conv (seed 001), 2 x [3x3 conv+BN+ReLU]
    head:    3x3 conv + ReLU, 1x1 conv to 4*(C+1) channels, PixelShuffle(2) -> (N,C+1,H,W)
    outputs: heatmap = sigmoid(first C channels), size = exp(last channel) (box side, px)

Input sizes must be multiples of :attr:`AtomDetector.pad_multiple` (2 * 2**(levels-1) = 16).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCHITECTURE", "AtomDetector", "count_parameters", "receptive_field"]


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Block(nn.Sequential):
    """Two 3x3 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout))


class AtomDetector(nn.Module):
    """U-Net centre-heatmap detector with a pixel-unshuffle stem and a pixel-shuffle head.

    Parameters
    ----------
    classes : int
        Number of heatmap classes C (e.g. 2: strong and weak columns).
    channels : tuple of int
        Feature channels per level, from the finest (1/2 resolution) to the bottleneck.
    stem : int
        Pixel-unshuffle factor of the stem (the finest level runs at 1/stem resolution).
    size_head : bool
        Also predict the box side (one channel, ``exp`` of a log-size).
    prior : float
        Initial heatmap probability (bias of the logits), as in CenterNet / RetinaNet.

    Notes
    -----
    ``forward`` returns raw outputs for training: ``(logits, log_size)`` with shapes
    (N, C, H, W) and (N, 1, H, W) (``log_size`` is None without the size head).
    :meth:`inference` (and the ONNX export) applies the sigmoid and the exponential.
    """

    def __init__(
        self,
        classes: int = 2,
        channels: tuple[int, ...] = (16, 32, 48, 64),
        stem: int = 2,
        size_head: bool = True,
        prior: float = 0.02,
    ) -> None:
        super().__init__()
        self.classes = int(classes)
        self.channels = tuple(int(c) for c in channels)
        self.stem_factor = int(stem)
        self.size_head = bool(size_head)
        out_ch = self.classes + (1 if size_head else 0)
        s2 = self.stem_factor**2
        self.unshuffle = nn.PixelUnshuffle(self.stem_factor)
        self.enc = nn.ModuleList()
        cin = s2
        for c in self.channels:
            self.enc.append(_Block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lvl in range(len(self.channels) - 2, -1, -1):
            c_lo, c = self.channels[lvl + 1], self.channels[lvl]
            self.up.append(nn.ConvTranspose2d(c_lo, c, 2, stride=2))
            self.fuse.append(
                nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True))
            )
            self.dec.append(_Block(c, c))
        c0 = self.channels[0]
        self.head = nn.Sequential(
            nn.Conv2d(c0, c0, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c0, s2 * out_ch, 1),
        )
        self.shuffle = nn.PixelShuffle(self.stem_factor)
        # bias so the initial heatmap is ~prior everywhere (stable focal-type losses)
        with torch.no_grad():
            bias = self.head[-1].bias.view(out_ch, s2)
            bias[: self.classes] = float(torch.logit(torch.tensor(prior)))
            if size_head:
                bias[self.classes :] = 2.0  # exp(2) ~ 7 px boxes to start with

    @property
    def pad_multiple(self) -> int:
        """Input sizes must be multiples of this."""
        return self.stem_factor * 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw outputs: heatmap logits (N, C, H, W) and log box side (N, 1, H, W) or None."""
        h = self.unshuffle(x)
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                h = self.pool(h)
            h = block(h)
            skips.append(h)
        for k, (up, fuse, dec) in enumerate(zip(self.up, self.fuse, self.dec, strict=True)):
            skip = skips[len(skips) - 2 - k]
            h = dec(fuse(torch.cat([up(h), skip], dim=1)))
        out = self.shuffle(self.head(h))
        logits = out[:, : self.classes]
        log_size = out[:, self.classes :] if self.size_head else None
        return logits, log_size

    def inference(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Deployed outputs: ``heatmap`` = sigmoid(logits) and ``size`` = exp(log size)."""
        logits, log_size = self.forward(x)
        if log_size is None:
            return (torch.sigmoid(logits),)
        return torch.sigmoid(logits), torch.exp(log_size.clamp(-3.0, 6.0))


#: What a model card's ``architecture.class`` says for :class:`AtomDetector`.
ARCHITECTURE = f"{AtomDetector.__module__}.{AtomDetector.__qualname__}"


class InferenceWrapper(nn.Module):
    """Wrap a detector so ``forward`` returns the deployed outputs (for ONNX export)."""

    def __init__(self, model: AtomDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return ``(heatmap, size)`` or ``(heatmap,)``."""
        return self.model.inference(image)


def count_parameters(model: nn.Module) -> int:
    """Count the trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def receptive_field(model: AtomDetector, size: int = 512) -> int:
    """Measure the receptive field (px) of the heatmap output empirically.

    The gradient of the centre output pixel with respect to a random input is non-zero on the
    receptive field (eval mode, current weights; a union over a few inputs so that no ReLU
    happens to block a path).

    Parameters
    ----------
    model : AtomDetector
        The network.
    size : int
        Side of the probe input (must exceed the receptive field).

    Returns
    -------
    int
        Side of the square that holds every input pixel influencing the centre output.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    grad = torch.zeros(size, size, dtype=torch.bool)
    c = size // 2
    for _ in range(3):
        x = torch.randn(1, 1, size, size, generator=gen).requires_grad_(True)
        logits, _ = model(x)
        logits[0, :, c, c].sum().backward()
        grad |= x.grad[0, 0].abs() > 0
    rows = torch.nonzero(grad.any(dim=1)).flatten()
    cols = torch.nonzero(grad.any(dim=0)).flatten()
    model.train(was_training)
    if len(rows) == 0:
        return 0
    return int(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
