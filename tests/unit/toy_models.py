"""Small Flux-shaped models for streaming tests: a patch embedding, a ModuleList of large "double"
blocks, a ModuleList of smaller "single" blocks, nested submodules, a norm with floating and integer
buffers. Hooks for misbehaviour: ``fail_at`` raises inside that block; ``order`` overrides the order
blocks run in."""
from __future__ import annotations

import torch
from torch import nn

HIDDEN = 32
TOKENS = 8


class ScaledNorm(nn.Module):
    """LayerNorm plus a floating buffer (streamed with its block) and an integer one (stays resident)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, width))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale.to(x.dtype) + self.calls.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.proj(weights @ v)


class DoubleBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.img_norm = ScaledNorm(width)
        self.img_attn = Attention(width)
        self.img_mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.img_attn(self.img_norm(x))
        return x + self.img_mlp(x)


class SingleBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = ScaledNorm(width)
        self.linear = nn.Linear(width, 2 * width)
        self.out = nn.Linear(2 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.tanh(self.linear(self.norm(x))))


class FluxLike(nn.Module):
    def __init__(self, doubles: int = 4, singles: int = 6, width: int = HIDDEN) -> None:
        super().__init__()
        self.img_in = nn.Linear(16, width)
        self.double_blocks = nn.ModuleList(DoubleBlock(width) for _ in range(doubles))
        self.single_blocks = nn.ModuleList(SingleBlock(width) for _ in range(singles))
        self.final = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 16))
        self.fail_at: int | None = None
        self.order: list[int] | None = None

    def blocks(self) -> list[nn.Module]:
        return [*self.double_blocks, *self.single_blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.img_in(x)
        blocks = self.blocks()
        for position, index in enumerate(self.order or range(len(blocks))):
            if position == self.fail_at:
                raise RuntimeError(f"toy failure at block {index}")
            x = blocks[index](x)
        return self.final(x)


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0, **sizes: int) -> FluxLike:
    torch.manual_seed(seed)
    model = FluxLike(**sizes).to(dtype).eval()
    with torch.no_grad():  # make buffers non-trivial so streaming them is visible in the output
        for module in model.modules():
            if isinstance(module, ScaledNorm):
                module.scale.uniform_(0.5, 1.5)
    return model


def make_input(dtype: torch.dtype = torch.float32, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, TOKENS, 16, generator=generator).to(dtype)
