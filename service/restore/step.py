"""One DIP optimisation step (forward, loss, backward, Adam) on a fixed input buffer, eager or replayed
from a CUDA graph.

On a GPU one 256² iteration is hundreds of small kernels, and launching them from Python takes longer
than running them (bench/results/dip/speed_cuda.md: the 2.6 GFLOP JPEG net takes about as long per
iteration as the 115 GFLOP denoising net). A CUDA graph records the launches once and replays them with
one call: 16 -> 4 ms per 256² denoising iteration on an H200 (bench/results/dip/speed_cuda_graphs.log).
What stays outside the graph is what must change per iteration from the host: the input noise (drawn
from the run's own generator into `net_in`), the output EMA and the stop rule.

With `bf16` (CPU), the forward runs under bfloat16 autocast: oneDNN's native bf16 (AMX/avx512_bf16)
convolutions, 0.38x the s/iteration of fp32 NCHW at 256², 2 threads (bench/results/dip/speed.md). The
convolutions compute in bf16 (activations, a per-step bf16 copy of the weights, their gradients); the
output layer stays fp32 (service/restore/skip.py), and so do the loss, the parameters and Adam's state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Eager steps before the capture (on a side stream, as CUDA graph capture asks): cuDNN autotuning, Adam's
# lazily created state and the caching allocator settle first. They are real iterations of the run.
EAGER_WARMUP = 3


class TrainStep:
    """`step(net_in)` runs one iteration and returns (output, loss).

    `loss(out)` may return one loss per job (a batch); their sum is minimised. With `graphs` on a CUDA
    device, the optimiser must have been made with `capturable=True`, and the returned tensors are the
    graph's static outputs: overwritten by the next step, so copy what must outlive it; and every step
    must get the same `net_in` tensor (fill it in place), since the graph reads that memory.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        loss: Callable[[torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        graphs: bool,
        bf16: bool = False,
    ) -> None:
        self._forward = forward
        self._bf16 = bf16
        self._loss = loss
        self._optimizer = optimizer
        self._graphs = graphs
        # (graph, its input, its static (output, loss)) once captured
        self._captured: (
            tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None
        ) = None
        self._eager_steps = 0
        self._side: torch.cuda.Stream | None = None  # the warm-up steps' stream

    @property
    def graphed(self) -> bool:
        """Whether steps now replay a captured graph."""
        return self._captured is not None

    def _eager(self, net_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(net_in.device.type, dtype=torch.bfloat16, enabled=self._bf16):
            out = self._forward(net_in)
        loss = self._loss(out)
        self._optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # per-job losses: job k's parameters only see job k's loss
        self._optimizer.step()
        # Detached, so no autograd graph outlives its step (a kept graph pins each parameter's
        # AccumulateGrad node to the stream it was made on: a mismatch once steps move to the graph's).
        return out.detach(), loss.detach()

    def __call__(self, net_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._graphs or net_in.device.type != "cuda":
            return self._eager(net_in)
        if self._captured is None and self._eager_steps < EAGER_WARMUP:
            self._eager_steps += 1
            current = torch.cuda.current_stream(net_in.device)
            if self._side is None:
                self._side = torch.cuda.Stream(net_in.device)
            side = self._side
            side.wait_stream(current)
            with torch.cuda.stream(side):
                out, loss = self._eager(net_in)
            current.wait_stream(side)
            for t in (out, loss):  # made on the side stream, read on this one: keep the allocator off them
                t.record_stream(current)
            return out, loss
        if self._captured is None:
            self._optimizer.zero_grad(set_to_none=True)  # backward in the graph writes fresh gradients
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static = self._eager(net_in)
            self._captured = (graph, net_in, static)
        graph, captured_in, static = self._captured
        if net_in is not captured_in:
            raise RuntimeError("a captured step replays on the tensor it was captured with: fill it in place")
        graph.replay()  # capture records without running: the first replay is the iteration itself
        return static
