"""Part 5: where the annealed mean runs: in the gateway (313 FP16 logits cross) or in the graph (2 ab planes).

Two deployments: co-located (gateway and Triton share /dev/shm, tensors through system shared
memory) and remote (plain gRPC). Each is measured both ways at c=1, first as the Triton call plus
the gateway's remaining decode work (Triton-direct through the gateway's client), then end to end
through gateway processes started with `PRIORLAB_DECODE_IN_TRITON` = 0 / 1 when the gateway has it.
The gateway-side decode stays the reference; the faster placement per deployment is recommended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from bench import plots, triton_stats
from bench.context import Context, figures_of, skipped
from bench.figures import Figure
from bench.inputs import model_inputs
from bench.load import colorize_load, colorize_requests, triton_direct
from bench.stack import supports_decode_in_triton
from bench.stats import ratio
from contract import ANNEALED_T_DEFAULT, ECCV16, MODELS
from service.color import ab_decode

log = logging.getLogger(__name__)

IN_GRAPH = "eccv16_ab"
# Recommend leaving the reference only for a clear win: on this shared machine, p50s of a few dozen
# requests move by 10% from one run to the next.
SWITCH_BELOW = 0.9
_DEPLOYMENTS = {True: "co-located (system shm)", False: "remote (plain gRPC)"}


def _decode_logits(outputs: dict[str, np.ndarray]) -> object:
    return ab_decode.annealed_mean(outputs["logits"], ANNEALED_T_DEFAULT)


def _decode_ab(outputs: dict[str, np.ndarray]) -> object:
    return outputs["ab"][0].astype(np.float32)  # what the gateway does with in-graph ab


def run(ctx: Context) -> dict[str, Any]:
    if IN_GRAPH not in MODELS:
        return skipped(
            f"contract.MODELS has no {IN_GRAPH!r} yet (the in-graph decode variant): nothing to compare"
        )
    url = ctx.stack.triton_server().grpc_url
    if IN_GRAPH not in triton_stats.ready_models(url):
        return skipped(f"Triton does not serve {IN_GRAPH!r}: run `make models`")
    cfg = ctx.config
    in_graph = MODELS[IN_GRAPH]
    direct: dict[str, dict[str, Any]] = {}
    for shm in (True, False):
        for spec, decode in ((ECCV16, _decode_logits), (in_graph, _decode_ab)):
            result, _ = asyncio.run(
                triton_direct(
                    url,
                    spec,
                    [model_inputs(spec, plane) for plane in ctx.l_planes],
                    shared_memory=shm,
                    count=cfg.placement_requests,
                    max_seconds=cfg.gateway_seconds * 2,
                    decode=decode,
                )
            )
            direct[f"{spec.name}, {'shm' if shm else 'grpc'}"] = result

    end_to_end: dict[str, dict[str, Any]] = {}
    notes = []
    if supports_decode_in_triton():
        requests = colorize_requests(
            ctx.jpegs, working_size=cfg.working_size, output_format=cfg.output_format
        )
        for shm in (True, False):
            for in_triton in (False, True):
                gateway = ctx.stack.gateway(shared_memory=shm, decode_in_triton=in_triton)
                end_to_end[f"{'graph' if in_triton else 'gateway'} decode, {'shm' if shm else 'grpc'}"] = (
                    asyncio.run(
                        colorize_load(
                            gateway.target,
                            requests,
                            concurrency=1,
                            max_requests=cfg.placement_gateway_requests,
                            max_seconds=cfg.gateway_seconds,
                        )
                    )
                )
                if (shm, in_triton) != (True, False):  # keep the default gateway for the other parts
                    ctx.stack.stop_gateway(gateway)
    else:
        notes.append(
            "the gateway has no PRIORLAB_DECODE_IN_TRITON setting yet: end-to-end comparison skipped"
        )

    figures = []
    recommendation = {}
    for shm in (True, False):
        mode = "shm" if shm else "grpc"
        here = direct[f"{ECCV16.name}, {mode}"]["total_ms"]["p50"]
        there = direct[f"{IN_GRAPH}, {mode}"]["total_ms"]["p50"]
        e2e_here = (
            end_to_end.get(f"gateway decode, {mode}", {}).get("latency_ms", {}).get("p50", float("nan"))
        )
        e2e_there = end_to_end.get(f"graph decode, {mode}", {}).get("latency_ms", {}).get("p50", float("nan"))
        value = ratio(e2e_there, e2e_here) if end_to_end else ratio(there, here)
        figures.append(
            Figure(
                f"decode_in_graph_{mode}",
                f"{_DEPLOYMENTS[shm]}: p50 with the annealed mean in the graph ÷ in the gateway "
                f"({'end to end' if end_to_end else 'Triton call + decode'}, c=1; < 1 favours the graph)",
                value,
                None,
                context=f"Triton call + decode {there:.1f} vs {here:.1f} ms"
                + (f"; end to end {e2e_there:.1f} vs {e2e_here:.1f} ms" if end_to_end else ""),
            )
        )
        if not value < SWITCH_BELOW:  # also NaN: the gateway decode is the reference
            choice = "PRIORLAB_DECODE_IN_TRITON=0 (gateway decode, the reference)"
        else:
            choice = f"PRIORLAB_DECODE_IN_TRITON=1 (in the graph: {value:.2f}× the gateway-decode p50)"
        recommendation[_DEPLOYMENTS[shm]] = choice
    bars = {name: r["total_ms"]["p50"] for name, r in direct.items()}
    plot = plots.bars(bars, ctx.out / "decode_placement.png", "Triton call + decode, p50 at c=1", "ms")
    log.info("decode placement: %s", recommendation)
    return {
        "direct": direct,
        "end_to_end": end_to_end,
        "recommendation": recommendation,
        "notes": notes,
        "plots": [plot.name] if plot else [],
        "figures": figures_of(*figures),
    }
