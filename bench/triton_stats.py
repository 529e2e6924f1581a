"""Triton's statistics API, as differences between two snapshots (the counters are cumulative)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import tritonclient.grpc as grpcclient


@dataclass(frozen=True)
class ModelStats:
    inference_count: int = 0
    execution_count: int = 0
    # Cumulative ns per stage (success, queue, compute_input, compute_infer, compute_output).
    stage_ns: dict[str, int] = field(default_factory=dict)
    # Executions per batch size, and their compute_infer ns.
    batches: dict[int, int] = field(default_factory=dict)
    batch_infer_ns: dict[int, int] = field(default_factory=dict)

    def __sub__(self, before: ModelStats) -> ModelStats:
        return ModelStats(
            self.inference_count - before.inference_count,
            self.execution_count - before.execution_count,
            {k: v - before.stage_ns.get(k, 0) for k, v in self.stage_ns.items()},
            {
                k: v - before.batches.get(k, 0)
                for k, v in self.batches.items()
                if v - before.batches.get(k, 0)
            },
            {
                k: v - before.batch_infer_ns.get(k, 0)
                for k, v in self.batch_infer_ns.items()
                if v - before.batch_infer_ns.get(k, 0)
            },
        )

    @property
    def dynamic_batch(self) -> float:
        """Inferences per execution: the batch size the dynamic batcher achieved on average."""
        return self.inference_count / self.execution_count if self.execution_count else math.nan

    def infer_ms_per_execution(self, batch_size: int = 1) -> float:
        """Mean compute_infer of executions of exactly `batch_size` (server-side model time)."""
        count = self.batches.get(batch_size, 0)
        return self.batch_infer_ns.get(batch_size, 0) / count / 1e6 if count else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "dynamic_batch": self.dynamic_batch,
            "batch_histogram": {str(k): v for k, v in sorted(self.batches.items())},
            "mean_ms_per_inference": {
                k: v / self.inference_count / 1e6 if self.inference_count else math.nan
                for k, v in self.stage_ns.items()
            },
        }


def parse(document: dict[str, Any], model: str) -> ModelStats:
    """`get_inference_statistics(as_json=True)` -> one model's counters, summed over versions."""
    inference = execution = 0
    stages: dict[str, int] = {}
    batches: dict[int, int] = {}
    batch_ns: dict[int, int] = {}
    for entry in document.get("model_stats", []):
        if entry.get("name") != model:
            continue
        inference += int(entry.get("inference_count", 0))
        execution += int(entry.get("execution_count", 0))
        for stage, value in entry.get("inference_stats", {}).items():
            stages[stage] = stages.get(stage, 0) + int(value.get("ns", 0))
        for batch in entry.get("batch_stats", []):
            size = int(batch["batch_size"])
            infer = batch.get("compute_infer", {})
            batches[size] = batches.get(size, 0) + int(infer.get("count", 0))
            batch_ns[size] = batch_ns.get(size, 0) + int(infer.get("ns", 0))
    return ModelStats(inference, execution, stages, batches, batch_ns)


def snapshot(url: str, model: str) -> ModelStats:
    client = grpcclient.InferenceServerClient(url)
    try:
        return parse(client.get_inference_statistics(model, as_json=True), model)
    finally:
        client.close()


def ready_models(url: str) -> list[str]:
    client = grpcclient.InferenceServerClient(url)
    try:
        index = client.get_model_repository_index(as_json=True)
    finally:
        client.close()
    return sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})


def server_version(url: str) -> str:
    client = grpcclient.InferenceServerClient(url)
    try:
        return str(client.get_server_metadata(as_json=True).get("version", "unknown"))
    finally:
        client.close()
