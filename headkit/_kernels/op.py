"""One definition per op, from which every route to it is made.

An op is written once as a `KernelOp`: its schema, its forward and backward (each already a
choice between the Triton kernels and the tiled PyTorch path, through `run_kernel`), the shapes
of its outputs (the fake), and a differentiable dense composite for double backward. From it:

- the eager route: an `torch.autograd.Function` that calls forward and backward directly (no
  dispatcher, no ``torch._dynamo`` import, which alone costs about 160 MiB of resident memory);
- the `torch.compile` route: the ``torch.library`` custom ops ``headkit::<name>`` and
  ``headkit::<name>_backward`` (opaque to dynamo: no graph breaks), their fakes, and the
  autograd registration that links them.

`run_kernel` is the one "try Triton, mark it failed, fall back to PyTorch" of every op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from . import backend

__all__ = ["KernelKey", "KernelOp", "run_kernel"]

T = TypeVar("T")


@dataclass(frozen=True)
class KernelKey:
    """What selects a kernel variant: the op, the inputs' device, the dtype the kernel computes
    its dot products in, the feature block, and whether the kernels cover the input at all."""

    op: str
    device: torch.device
    dtype: torch.dtype
    block_d: int
    supported: bool = True


def run_kernel(key: KernelKey, triton: Callable[[], T], torch_path: Callable[[], T]) -> T:
    """``triton()`` where the backend policy chooses Triton for ``key`` (after its self-check),
    ``torch_path()`` otherwise; a Triton kernel that raises is reported once and its key uses
    PyTorch from then on (under ``HEADKIT_TRITON=1`` the error is raised instead)."""
    if backend.use_triton(key.op, key.device, key.dtype, key.block_d, key.supported):
        try:
            return triton()
        except Exception as err:
            if backend.triton_mode() == "1":
                raise
            backend.mark_failed(
                key.op, key.device, key.dtype, key.block_d, f"raised {type(err).__name__}: {err}"
            )
    return torch_path()


def _parse_args(schema: str) -> list[tuple[str, str]]:
    """``[(type, name)]`` of a schema's arguments, e.g. ``"Tensor q, float t"``."""
    out = []
    for part in schema.split(","):
        typ, name = part.strip().rsplit(" ", 1)
        out.append((typ, name))
    return out


class KernelOp:
    """An op defined once; `apply` runs it on either route.

    Args:
        name: the op's name (``headkit::<name>`` under `torch.compile`).
        args: the schema of its inputs, e.g. ``"Tensor q, Tensor k, float inv_t, str dot"``
            (``Tensor?`` for an optional tensor).
        num_outputs: how many tensors the forward returns.
        forward: ``forward(*inputs) -> outputs``.
        backward: ``backward(grads, inputs, saved, aliased) -> gradients``: ``grads`` of the
            differentiable outputs, ``saved`` the outputs listed in ``save_outputs``; one
            tensor per input of ``grad_inputs`` (an empty tensor for an absent optional input).
            ``aliased``: the inputs of ``alias`` are one tensor (eager route only); the first
            then receives the whole gradient and the second's is ignored.
        fake: ``fake(*inputs) -> outputs`` of the right shapes, dtypes and devices.
        dense: ``dense(*inputs) -> outputs``, differentiable (double backward only).
        grad_inputs: positions of the inputs that receive gradients.
        save_outputs: positions of the outputs the backward needs.
        nondiff_outputs: positions of the outputs that carry no gradient.
        alias: two input positions that are often one tensor (``k is q``).
    """

    def __init__(
        self,
        name: str,
        *,
        args: str,
        num_outputs: int,
        forward: Callable[..., tuple[Tensor, ...]],
        backward: Callable[
            [tuple[Tensor, ...], tuple[Any, ...], tuple[Tensor, ...], bool], tuple[Tensor, ...]
        ],
        fake: Callable[..., tuple[Tensor, ...]],
        dense: Callable[..., tuple[Tensor, ...]],
        grad_inputs: Sequence[int],
        save_outputs: Sequence[int] = (),
        nondiff_outputs: Sequence[int] = (),
        alias: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.arg_types = _parse_args(args)
        self.num_outputs = num_outputs
        self.forward = forward
        self.backward = backward
        self.grad_inputs = tuple(grad_inputs)
        self.save_outputs = tuple(save_outputs)
        self.nondiff_outputs = tuple(nondiff_outputs)
        self.diff_outputs = tuple(i for i in range(num_outputs) if i not in self.nondiff_outputs)
        self.alias = alias
        self.dense = dense
        self.tensor_inputs = tuple(
            i for i, (t, _) in enumerate(self.arg_types) if t.startswith("Tensor")
        )
        self._eager = self._make_function()
        self._op, self._bwd_op = self._make_custom_ops(fake)

    # ------------------------------------------------------------------ the two routes
    def apply(self, *inputs: Any) -> tuple[Tensor, ...]:
        """Run the op: the custom op while `torch.compile` traces, the eager function else."""
        if len(inputs) != len(self.arg_types):
            raise TypeError(f"{self.name} takes {len(self.arg_types)} inputs, got {len(inputs)}")
        if torch.compiler.is_compiling():
            out: tuple[Tensor, ...] = self._op(*inputs)
            return out
        res: tuple[Tensor, ...] = self._eager.apply(*inputs)
        return res

    def _grads(
        self,
        grads: tuple[Tensor, ...],
        inputs: tuple[Any, ...],
        saved: tuple[Tensor, ...],
        al: bool,
    ) -> list[Tensor | None]:
        """Gradients for every input (None where none flows)."""
        raw = self.backward(grads, inputs, saved, al)
        out: list[Tensor | None] = [None] * len(inputs)
        for pos, g in zip(self.grad_inputs, raw, strict=True):
            out[pos] = g if inputs[pos] is not None else None
        if al and self.alias is not None:
            out[self.alias[1]] = None
        return out

    def _dense_grads(
        self, inputs: tuple[Any, ...], grads: tuple[Tensor, ...], al: bool
    ) -> list[Tensor | None]:
        """Differentiable gradients (``create_graph=True``) through the dense composite."""
        skip = self.alias[1] if al and self.alias is not None else -1
        wrt = [
            i
            for i in self.grad_inputs
            if i != skip and isinstance(inputs[i], Tensor) and inputs[i].requires_grad
        ]
        out: list[Tensor | None] = [None] * len(inputs)
        if not wrt:
            return out
        outs = self.dense(*inputs)
        found = torch.autograd.grad(
            [outs[i] for i in self.diff_outputs],
            [inputs[i] for i in wrt],
            list(grads),
            create_graph=True,
            allow_unused=True,
        )
        for i, g in zip(wrt, found, strict=True):
            out[i] = g
        return out

    def _restore(self, ctx: Any) -> tuple[tuple[Any, ...], tuple[Tensor, ...]]:
        """The inputs (tensors from the saved ones, the rest from ``ctx.consts``) and the saved
        outputs of a backward's context."""
        saved = ctx.saved_tensors
        n = len(self.tensor_inputs)
        inputs = list(ctx.consts)
        for i, t in zip(self.tensor_inputs, saved[:n], strict=True):
            inputs[i] = t
        return tuple(inputs), tuple(saved[n:])

    def _make_function(self) -> type[torch.autograd.Function]:
        op = self

        class _Eager(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, *inputs: Any) -> tuple[Tensor, ...]:
                outs = op.forward(*inputs)
                al = op.alias is not None and inputs[op.alias[0]] is inputs[op.alias[1]]
                ctx.aliased = al
                ctx.consts = [None if i in op.tensor_inputs else x for i, x in enumerate(inputs)]
                tensors = [inputs[i] for i in op.tensor_inputs]
                if al and op.alias is not None:  # one tensor: saved once
                    tensors[op.tensor_inputs.index(op.alias[1])] = None
                ctx.save_for_backward(*tensors, *(outs[i] for i in op.save_outputs))
                ctx.mark_non_differentiable(*(outs[i] for i in op.nondiff_outputs))
                return tuple(outs)

            @staticmethod
            def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
                inputs, saved = op._restore(ctx)
                if ctx.aliased and op.alias is not None:
                    inputs = (
                        *inputs[: op.alias[1]],
                        inputs[op.alias[0]],
                        *inputs[op.alias[1] + 1 :],
                    )
                dg = tuple(grads[i] for i in op.diff_outputs)
                if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
                    return tuple(op._dense_grads(inputs, dg, ctx.aliased))
                return tuple(op._grads(dg, inputs, saved, ctx.aliased))

        _Eager.__name__ = _Eager.__qualname__ = f"_{self.name}_fn"
        return _Eager

    def _make_custom_ops(self, fake: Callable[..., tuple[Tensor, ...]]) -> tuple[Any, Any]:
        op = self
        args = ", ".join(f"{t} {n}" for t, n in self.arg_types)
        outs = ", ".join(["Tensor"] * self.num_outputs)
        fwd = torch.library.custom_op(
            f"headkit::{self.name}",
            lambda *inputs: tuple(op.forward(*inputs)),
            mutates_args=(),
            schema=f"({args}) -> ({outs})",
        )
        fwd.register_fake(lambda *inputs: tuple(fake(*inputs)))
        g_args = ", ".join(f"Tensor g{i}" for i in self.diff_outputs)
        s_args = ", ".join(f"Tensor s{i}" for i in self.save_outputs)
        b_args = ", ".join(a for a in (g_args, s_args, args) if a)
        b_outs = ", ".join(["Tensor"] * len(self.grad_inputs))
        ng, ns = len(self.diff_outputs), len(self.save_outputs)

        def bwd_impl(*xs: Any) -> tuple[Tensor, ...]:
            g, s, inputs = xs[:ng], xs[ng : ng + ns], xs[ng + ns :]
            return tuple(op.backward(tuple(g), tuple(inputs), tuple(s), False))

        def bwd_fake(*xs: Any) -> tuple[Tensor, ...]:
            inputs = xs[ng + ns :]
            out = []
            for i in op.grad_inputs:
                x = inputs[i]
                out.append(torch.empty_like(x) if x is not None else xs[0].new_empty(0))
            return tuple(out)

        bwd = torch.library.custom_op(
            f"headkit::{self.name}_backward",
            bwd_impl,
            mutates_args=(),
            schema=f"({b_args}) -> ({b_outs})",
        )
        bwd.register_fake(bwd_fake)

        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
            ctx.consts = [None if i in op.tensor_inputs else x for i, x in enumerate(inputs)]
            ctx.save_for_backward(
                *(inputs[i] for i in op.tensor_inputs), *(output[i] for i in op.save_outputs)
            )
            ctx.mark_non_differentiable(*(output[i] for i in op.nondiff_outputs))

        def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
            inputs, saved = op._restore(ctx)
            raw = bwd(*(grads[i] for i in op.diff_outputs), *saved, *inputs)
            out: list[Tensor | None] = [None] * len(inputs)
            for pos, g in zip(op.grad_inputs, raw, strict=True):
                out[pos] = g if inputs[pos] is not None else None
            return tuple(out)

        fwd.register_autograd(backward, setup_context=setup_context)
        return fwd, bwd
