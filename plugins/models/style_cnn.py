"""``style-cnn``: a log-mel CNN that classifies the musical style of 4 s clips.

The log-mel front end is inside the network, so the model is differentiable from the waveform.
Trained by our own code on a dataset's train split (``m21-styles`` by default), selected on its
valid split, and cached as safetensors keyed by (version, parameters, dataset fingerprint).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from musicbench.api import Context, Dataset, TrainedModel, check_number, check_seed
from musicbench_plugins._limits import MAX_LEARNING_RATE, MAX_SIZE, MAX_STEPS
from musicbench_plugins.models.frontends import LogMel


@dataclass(frozen=True)
class StyleCNNParams:
    """Architecture and training recipe; every field changes the checkpoint key."""

    train_dataset: str = "m21-styles"
    train_dataset_params: dict[str, Any] = field(default_factory=dict)
    width: int = 8
    n_mels: int = 64
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    mel_shift: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("width", "n_mels", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("width", "n_mels", "batch_size"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("epochs", self.epochs, at_least=1, at_most=MAX_STEPS, integer=True)
        check_number("learning_rate", self.learning_rate, above=0, at_most=MAX_LEARNING_RATE)
        check_number("weight_decay", self.weight_decay, at_least=0, at_most=1)
        check_number("mel_shift", self.mel_shift, at_least=0, at_most=self.n_mels, integer=True)
        check_seed("seed", self.seed)


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class StyleCNNNet(nn.Module):
    """``audio[B, T]`` -> ``logits[B, K]``. ``features.3`` is the last conv block (Grad-CAM)."""

    def __init__(self, n_classes: int, width: int = 16, n_mels: int = 64,
                 sample_rate: int = 16_000):
        super().__init__()
        self.frontend = LogMel(sample_rate=sample_rate, n_fft=1024, hop=256, n_mels=n_mels)
        self.input_norm = nn.BatchNorm2d(1)
        w = width
        self.features = nn.Sequential(
            _block(1, w, True), _block(w, 2 * w, True), _block(2 * w, 4 * w, True),
            _block(4 * w, 8 * w, False),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(16 * w, n_classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.classify(self.frontend(audio))

    def classify(self, logmel: torch.Tensor) -> torch.Tensor:
        """``log-mel[B, 1, mels, frames]`` -> ``logits[B, K]``."""
        x = self.features(self.input_norm(logmel))  # [B, 8w, mels/8, frames/8]
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))


class StyleCNN(TrainedModel):
    """Log-mel CNN style classifier (4 s at 16 kHz), trained on first use."""

    task = "classification"
    sample_rate = 16_000
    input_seconds = 4.0
    cam_layer = "features.3"
    version = "1"
    Params = StyleCNNParams
    checkpoint_prefix = "style-cnn"

    def make_net(self, ds: Dataset) -> StyleCNNNet:
        self.labels = tuple(ds.labels)
        p = self.params
        return StyleCNNNet(len(ds.labels), p.width, p.n_mels, self.sample_rate)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.module()(audio)


    # -- training -----------------------------------------------------------------------------

    def fit(self, ctx: Context) -> dict[str, Any]:
        """Train on the train split, keep the best epoch on the valid split, save, and return
        a summary (accuracies on valid and test)."""
        p = self.params
        ds = self.training_dataset(ctx)
        device = ctx.device
        train = ds.examples("train")
        x_train = torch.stack([e.audio for e in train])
        y_train = torch.tensor([e.label for e in train])
        net = self.build_net(ds, device)
        opt = torch.optim.AdamW(net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
        batches = (len(train) + p.batch_size - 1) // p.batch_size
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.learning_rate,
                                                    total_steps=p.epochs * batches)
        gen = torch.Generator().manual_seed(p.seed)
        best_acc, best_state, best_epoch = -1.0, None, -1
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]), ctx.progress(
            f"training style-cnn on {ds.name}", total=p.epochs * batches
        ) as task:
            torch.manual_seed(p.seed)  # dropout draws
            for epoch in range(p.epochs):
                net.train()
                order = torch.randperm(len(train), generator=gen)
                for b in range(batches):
                    idx = order[b * p.batch_size : (b + 1) * p.batch_size]
                    xb = _augment(x_train[idx], gen).to(device)
                    logmel = _shift_bands(net.frontend(xb), p.mel_shift, gen)
                    loss = F.cross_entropy(net.classify(logmel), y_train[idx].to(device),
                                           label_smoothing=0.05)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    task.advance()
                acc = _accuracy(net, ds, "valid", device, p.batch_size)
                task.update(description=f"training style-cnn: epoch {epoch + 1}/{p.epochs}, "
                                        f"valid acc {100 * acc:.1f}%")
                if acc > best_acc:
                    best_acc, best_epoch = acc, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        assert best_state is not None
        net.load_state_dict(best_state)
        summary = {
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "best_epoch": best_epoch + 1, "valid_accuracy": round(best_acc, 4),
            "test_accuracy": round(_accuracy(net, ds, "test", device, p.batch_size), 4),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "params": asdict(p),
        }
        return self.save_trained(ctx, ds, net, summary)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random gain (-6..0 dB) and circular time shift: style is neither loudness nor phase."""
    b, t = x.shape
    gain = 10 ** (-6 * torch.rand(b, 1, generator=gen) / 20)
    shift = torch.randint(0, t, (b,), generator=gen)
    idx = (torch.arange(t)[None] + shift[:, None]) % t
    return x.gather(1, idx) * gain


def _shift_bands(logmel: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Roll ``log-mel[B, 1, mels, frames]`` by up to ``max_shift`` bands (one draw per batch):
    a cheap stand-in for transposition, since style does not depend on the key."""
    if max_shift == 0:
        return logmel
    shift = int(torch.randint(-max_shift, max_shift + 1, (1,), generator=gen))
    return torch.roll(logmel, shift, dims=2)


@torch.no_grad()
def _accuracy(net: nn.Module, ds: Dataset, split: str, device: torch.device, bs: int) -> float:
    net.eval()
    examples = ds.examples(split)  # type: ignore[arg-type]
    correct = 0
    for i in range(0, len(examples), bs):
        chunk = examples[i : i + bs]
        x = torch.stack([e.audio for e in chunk]).to(device)
        y = torch.tensor([e.label for e in chunk], device=device)
        correct += int((net(x).argmax(-1) == y).sum())
    return correct / max(1, len(examples))
