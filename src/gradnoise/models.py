"""Built-in models, by name, with seeded initialisation.

All are free of BatchNorm and dropout, so per-example gradients are well defined in train mode.
Every parameter belongs to a layer with a per-example rule (Linear, Conv, GroupNorm, LayerNorm,
Embedding), so the fast structured backend of :func:`gradnoise.per_sample_grads` applies.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .study.options import check_keys, choice, int_list, integer

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    widths: Sequence[int] = (256, 256),
    activation: str = "relu",
) -> nn.Module:
    """Fully connected network ``prod(input_shape) -> widths... -> num_classes``."""
    act = ACTIVATIONS[choice("mlp", "activation", activation, tuple(ACTIVATIONS))]
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for w in int_list("mlp", "widths", widths, 1):
        layers += [nn.Linear(fan_in, w), act()]
        fan_in = w
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


def lenet(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """LeNet-5: conv6-5, pool, conv16-5, pool, 120-84-classes (1-D for ``[C, L]`` inputs).

    Inputs smaller than 28 pixels use padding 2 in both convolutions so that 8x8 digits and
    length-40 signals fit; 28x28 inputs give the classic 16x4x4 = 256 features.
    """
    if len(input_shape) not in (2, 3):
        raise ConfigError(
            f"lenet needs [C, L] or [C, H, W] inputs, got shape {tuple(input_shape)}; use mlp "
            "for flat inputs"
        )
    two_d = len(input_shape) == 3
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.MaxPool1d)
    pad = 2 if min(input_shape[1:]) < 28 else 0
    features = nn.Sequential(
        conv(input_shape[0], 6, 5, padding=pad),
        nn.ReLU(),
        pool(2),
        conv(6, 16, 5, padding=pad),
        nn.ReLU(),
        pool(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        try:
            n_feat = features(torch.zeros(1, *input_shape)).shape[1]
        except RuntimeError as err:  # two 5-wide convolutions and 2x poolings leave nothing
            raise ConfigError(
                f"lenet: inputs of shape {tuple(input_shape)} are too small for its two "
                "convolutions and poolings (at least 4 per spatial dimension); use mlp"
            ) from err
    return nn.Sequential(
        features,
        nn.Linear(n_feat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


class _ResidualBlock(nn.Module):
    def __init__(self, conv: type[nn.Module], channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = conv(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        return self.act(x + self.norm2(self.conv2(h)))


class ResNet(nn.Module):
    """Small residual CNN with GroupNorm: stem conv, residual blocks, global average pool, linear."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        channels: int = 16,
        blocks: int = 2,
        groups: int = 4,
    ) -> None:
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ConfigError(
                f"resnet needs [C, L] or [C, H, W] inputs, got shape {tuple(input_shape)}; use "
                "mlp for flat inputs"
            )
        channels = integer("resnet", "channels", channels, 1)
        blocks = integer("resnet", "blocks", blocks, 0)
        groups = integer("resnet", "groups", groups, 1)
        if channels % groups:
            raise ConfigError(
                f"resnet: channels ({channels}) must be a multiple of groups ({groups})"
            )
        conv = nn.Conv2d if len(input_shape) == 3 else nn.Conv1d
        self.stem = conv(input_shape[0], channels, 3, padding=1, bias=False)
        self.stem_norm = nn.GroupNorm(groups, channels)
        self.blocks = nn.Sequential(
            *[_ResidualBlock(conv, channels, groups) for _ in range(blocks)]
        )
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(torch.relu(self.stem_norm(self.stem(x))))
        return self.head(h.flatten(2).mean(2))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, s, d))


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class Transformer(nn.Module):
    """Tiny transformer classifier: each input value is a token.

    Float inputs are embedded by a Linear map of the scalar value, integer inputs (token ids,
    below ``vocab``) by an Embedding; positions by an Embedding; pre-LayerNorm blocks; mean pool.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        dim: int = 32,
        heads: int = 4,
        depth: int = 2,
        vocab: int | None = None,
    ) -> None:
        super().__init__()
        dim = integer("transformer", "dim", dim, 1)
        heads = integer("transformer", "heads", heads, 1)
        depth = integer("transformer", "depth", depth, 0)
        if dim % heads:
            raise ConfigError(f"transformer: dim ({dim}) must be a multiple of heads ({heads})")
        if vocab is not None:
            vocab = integer("transformer", "vocab", vocab, 1)
        self.length = math.prod(input_shape)
        self.value = nn.Embedding(vocab, dim) if vocab else nn.Linear(1, dim)
        self.position = nn.Embedding(self.length, dim)
        self.blocks = nn.Sequential(*[_TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        tokens = x.reshape(b, self.length)
        h = (
            self.value(tokens.long())  # ids may arrive as floats (an .npz X is read as float32)
            if isinstance(self.value, nn.Embedding)
            else self.value(tokens[..., None])
        )
        positions = torch.arange(self.length, device=x.device).expand(b, self.length)
        h = self.blocks(h + self.position(positions))
        return self.head(self.norm(h).mean(1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "resnet": ResNet,
    "transformer": Transformer,
}


_POSITIONAL = ("input_shape", "num_classes")


def _input_shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a non-empty tuple of positive ints."""
    shape = tuple(int_list("build_model", "input_shape", input_shape, 1))
    if not shape:
        raise ConfigError("build_model: input_shape is empty; one input has at least one value")
    return shape


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> nn.Module:
    """Instantiate built-in model ``name`` with parameters drawn from ``torch.manual_seed(seed)``.

    The global torch RNG is left untouched (the draw happens in a forked RNG state).

    Example:
        >>> m = build_model("mlp", (64,), 10, widths=(32,))
        >>> sum(p.numel() for p in m.parameters())
        2410
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; built-in models: {', '.join(MODELS)}")
    shape = _input_shape(input_shape)
    num_classes = integer("build_model", "num_classes", num_classes, 1)
    seed = integer("build_model", "seed", seed, 0, 2**64 - 1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"build_model: dtype must be a floating torch dtype, got {dtype!r}")
    params = inspect.signature(MODELS[name]).parameters
    check_keys(f"{name} model_options", kwargs, [p for p in params if p not in _POSITIONAL])
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # built on the CPU; CUDA RNGs untouched
        model = MODELS[name](shape, num_classes, **kwargs)
    return model.to(dtype)
