"""The PPO update's compute floor: the matrix products between hidden layers, timed alone (issue 24).

At the report's network (3 -> 256 -> 256 -> heads) and minibatch 64, each gradient step does three
64x256x256 products that no implementation can avoid: the second layer's forward pass, the gradient
w.r.t. its input, and the gradient w.r.t. its weights. Every other op of a step (the first layer, whose
inner size is the observation's 3; the 2-wide heads; every elementwise op; Adam) is small beside them,
so an update's time over these products' time says how much of it is overhead.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from backends.base import PolicySpec


class Product(NamedTuple):
    """One (rows x inner) @ (inner x cols) matrix product."""

    rows: int
    inner: int
    cols: int

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two floating-point operations each."""
        return 2 * self.rows * self.inner * self.cols


def floor_products(policy: PolicySpec, minibatch: int) -> tuple[Product, ...]:
    """The products of one gradient step between consecutive hidden layers: forward, input gradient, weight gradient."""
    products = []
    for inner, cols in zip(policy.hidden_sizes, policy.hidden_sizes[1:], strict=False):  # pairs of neighbours
        products += [
            Product(minibatch, inner, cols),  # h_i = act(h_{i-1} W_i')
            Product(minibatch, cols, inner),  # d h_{i-1} = d z_i W_i
            Product(cols, minibatch, inner),  # d W_i = d z_i' h_{i-1}
        ]
    return tuple(products)


def time_floor(products: tuple[Product, ...], steps: int) -> float:
    """Seconds for `steps` rounds of the products, each on its own float32 operands, in the current thread count."""
    generator = torch.Generator().manual_seed(0)
    operands = [
        (torch.randn(p.rows, p.inner, generator=generator), torch.randn(p.inner, p.cols, generator=generator)) for p in products
    ]
    outputs = [torch.empty(p.rows, p.cols) for p in products]
    started = time.perf_counter()
    for _ in range(steps):
        for (left, right), out in zip(operands, outputs, strict=True):
            torch.mm(left, right, out=out)
    return time.perf_counter() - started
