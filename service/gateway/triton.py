"""The gateway's inference backend: Triton over gRPC, with system shared memory when co-located.

`InferenceBackend` is the small protocol the colorize pipeline depends on; `TritonBackend` is the
real one (tritonclient.grpc.aio). Tests of the pipeline logic use an in-memory fake.

Shared memory (docs/serving.md §1.7): moving the 313-bin logits over gRPC costs more than
the model at 256² (p50 7.9 -> 1.6 ms with shm). Each in-flight request takes one slot (an input
and an output region) from a pool, so concurrent requests never share a region; a slot grows
when a larger working size needs more bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.utils.shared_memory as shm
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from contract import (
    ANNEALED_T_DEFAULT,
    PARAM_CHECKPOINT,
    PARAM_SUGGEST_SOFTEN,
    PARAM_TEMPERATURE,
    PARAM_TRAINED,
    ModelSpec,
)
from service.color.suggest import SOFTEN
from service.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    PriorlabError,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    checkpoint: str
    trained: bool
    default_temperature: float = ANNEALED_T_DEFAULT
    suggest_soften: float = SOFTEN  # SuggestColors' logit scale for this checkpoint


class InferenceBackend(Protocol):
    async def infer(
        self, spec: ModelSpec, inputs: dict[str, NDArray[Any]], *, timeout_s: float
    ) -> dict[str, NDArray[Any]]: ...

    async def model_info(self, spec: ModelSpec) -> ModelInfo: ...

    async def ready(self, spec: ModelSpec) -> bool: ...

    async def close(self) -> None: ...


def _map_error(error: InferenceServerException, model: str) -> Exception:
    """Triton's status -> the gateway's error hierarchy (one place; docs/serving.md §4.2)."""
    status = str(error.status() or "")
    message = error.message() or str(error)
    lowered = message.lower()
    if "queue size" in lowered or "exceeds maximum queue" in lowered or "request timeout expired" in lowered:
        return ResourceExhausted(f"model {model!r} queue is full: {message}")
    if "DEADLINE_EXCEEDED" in status:
        return DeadlineExceeded(f"Triton did not answer in time for model {model!r}")
    if "NOT_FOUND" in status or ("unknown model" in lowered) or ("not found" in lowered):
        return NotFound(f"model {model!r} is not served: {message}")
    if "INVALID_ARGUMENT" in status:
        return InvalidArgument(f"model {model!r} rejected the request: {message}")
    if "RESOURCE_EXHAUSTED" in status:
        return ResourceExhausted(f"model {model!r}: {message}")
    return Unavailable(f"Triton is unavailable for model {model!r}: {status} {message}")


@dataclass
class _Slot:
    """One in-flight request's pair of shared-memory regions."""

    key: str
    in_handle: object | None = None
    out_handle: object | None = None
    in_bytes: int = 0
    out_bytes: int = 0


PROBE_SIZE = 64  # the smallest working size: a probe costs a few ms
PROBE_TIMEOUT_S = 1.0
PROBE_FRESH_S = 1.0  # a model that answered a request this recently needs no probe


def probe_arrays(spec: ModelSpec, size: int = PROBE_SIZE) -> dict[str, NDArray[Any]]:
    """A health probe's inputs: mid-gray L at `size`², no hints, the paper's temperature."""
    fill = {"L": 50.0, "T": ANNEALED_T_DEFAULT}
    shape = {t.name: t.shape(1, size, size) for t in spec.inputs}
    return {t.name: np.full(shape[t.name], fill.get(t.name, 0.0), dtype=t.numpy_dtype) for t in spec.inputs}


SHM_DIR = "/dev/shm"
# Triton holds a region "in use" until it has released the request that used it, a moment after the
# response reached us; an unregister in that moment is refused (`_unregister` waits it out).
IN_USE_WAIT_S = 2.0


def _owner_only(key: str, shm_dir: str = SHM_DIR) -> None:
    """Makes the region `key` readable and writable by this user only (0600), and refuses one it does not
    own: `create_shared_memory_region` reuses a region that already exists under the name, and one another
    local user made there (say between our destroy and create when a region grows) would expose the
    tensors. Python's shared memory already creates 0600; this holds whatever created it."""
    path = os.path.join(shm_dir, key.lstrip("/"))
    info = os.stat(path, follow_symlinks=False)
    if info.st_uid != os.geteuid() or not stat.S_ISREG(info.st_mode):
        raise Internal(f"shared-memory region {path} is not a file of this user: refusing to use it")
    if stat.S_IMODE(info.st_mode) != 0o600:
        os.chmod(path, 0o600, follow_symlinks=False)


def _create_region(key: str, size: int) -> Any:
    """A system shared-memory region `/key` of `size` bytes, this user's only (`_owner_only`)."""
    handle = shm.create_shared_memory_region(key, f"/{key}", size)
    try:
        _owner_only(key)
    except BaseException:
        shm.destroy_shared_memory_region(handle)
        raise
    return handle


def _round_up(n: int) -> int:
    return 1 << max(16, (n - 1).bit_length())


class TritonBackend:
    def __init__(self, url: str, *, shared_memory: bool = False, slots: int = 8) -> None:
        self._client = grpcclient.InferenceServerClient(url)
        self._url = url
        self._shared_memory = shared_memory
        self._slots: asyncio.Queue[_Slot] = asyncio.Queue()
        prefix = f"priorlab_gw_{uuid.uuid4().hex[:8]}"
        for i in range(slots if shared_memory else 0):
            self._slots.put_nowait(_Slot(key=f"{prefix}_{i}"))
        self._all_slots = list(self._slots._queue)  # type: ignore[attr-defined]
        self._info: dict[str, ModelInfo] = {}
        self._answered: dict[str, float] = {}  # model -> monotonic time of its last good answer

    async def ready(self, spec: ModelSpec, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """The server and the model say they are ready, and the model answers a tiny inference:
        Triton 2.51 reports a model ready after its Python-backend stub died (every call then fails)."""
        try:
            if not (
                await self._client.is_server_ready(client_timeout=timeout_s)
                and await self._client.is_model_ready(spec.name, client_timeout=timeout_s)
            ):
                return False
            # A real request answered within the last second already proved it; don't add load.
            if time.monotonic() - self._answered.get(spec.name, -1e9) > PROBE_FRESH_S:
                await self.infer(spec, probe_arrays(spec), timeout_s=timeout_s)
        except (InferenceServerException, PriorlabError):
            return False
        return True

    async def model_info(self, spec: ModelSpec) -> ModelInfo:
        """Version and checkpoint identity from the served config (export writes them)."""
        cached = self._info.get(spec.name)
        if cached is not None:
            return cached
        try:
            config = (await self._client.get_model_config(spec.name, client_timeout=5)).config
            index = await self._client.get_model_repository_index(client_timeout=5)
        except InferenceServerException as e:
            raise _map_error(e, spec.name) from None
        versions = [m.version for m in index.models if m.name == spec.name and m.state == "READY"]
        params = config.parameters
        info = ModelInfo(
            name=spec.name,
            version=max(versions, key=int) if versions else "",
            checkpoint=params[PARAM_CHECKPOINT].string_value if PARAM_CHECKPOINT in params else "unknown",
            trained=params[PARAM_TRAINED].string_value == "true" if PARAM_TRAINED in params else False,
            default_temperature=(
                float(params[PARAM_TEMPERATURE].string_value)
                if PARAM_TEMPERATURE in params
                else ANNEALED_T_DEFAULT
            ),
            suggest_soften=(
                float(params[PARAM_SUGGEST_SOFTEN].string_value) if PARAM_SUGGEST_SOFTEN in params else SOFTEN
            ),
        )
        self._info[spec.name] = info
        return info

    async def infer(
        self, spec: ModelSpec, inputs: dict[str, NDArray[Any]], *, timeout_s: float
    ) -> dict[str, NDArray[Any]]:
        arrays = [np.ascontiguousarray(inputs[t.name], dtype=t.numpy_dtype) for t in spec.inputs]
        batch, _, height, width = arrays[0].shape
        out_shapes = [t.shape(batch, height, width) for t in spec.outputs]
        out_sizes = [
            int(np.prod(s)) * np.dtype(t.numpy_dtype).itemsize
            for s, t in zip(out_shapes, spec.outputs, strict=True)
        ]
        try:
            if not self._shared_memory:
                response = await self._infer_plain(spec, arrays, timeout_s)
                self._answered[spec.name] = time.monotonic()
                return response
            slot = await self._slots.get()
            try:
                try:
                    response = await self._infer_shm(spec, slot, arrays, out_sizes, timeout_s)
                except InferenceServerException as e:
                    if "shared memory region" not in str(e.message()):
                        raise
                    # Triton was restarted (the stack's supervisor): it forgot this slot's regions.
                    # Register them anew and try once more; other slots heal on their next use.
                    self._forget(slot)
                    response = await self._infer_shm(spec, slot, arrays, out_sizes, timeout_s)
                self._answered[spec.name] = time.monotonic()
                return response
            finally:
                self._slots.put_nowait(slot)
        except InferenceServerException as e:
            raise _map_error(e, spec.name) from None

    async def _infer_plain(
        self, spec: ModelSpec, arrays: list[NDArray[Any]], timeout_s: float
    ) -> dict[str, NDArray[Any]]:
        request = []
        for t, a in zip(spec.inputs, arrays, strict=True):
            tensor = grpcclient.InferInput(t.name, list(a.shape), t.dtype)
            tensor.set_data_from_numpy(a)
            request.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in spec.outputs]
        # `timeout` too: Triton drops a request still queued past its deadline (allow_timeout_override).
        result = await self._client.infer(
            spec.name, request, outputs=outputs, client_timeout=timeout_s, timeout=int(timeout_s * 1e6)
        )
        return {t.name: result.as_numpy(t.name) for t in spec.outputs}

    async def _ensure(self, slot: _Slot, in_bytes: int, out_bytes: int) -> None:
        """(Re)create and register the slot's regions when they are missing or too small."""
        if slot.in_bytes < in_bytes:
            await self._drop(slot, "in")
            slot.in_bytes = _round_up(in_bytes)
            slot.in_handle = _create_region(f"{slot.key}_in", slot.in_bytes)
            await self._register(f"{slot.key}_in", slot.in_bytes)
        if slot.out_bytes < out_bytes:
            await self._drop(slot, "out")
            slot.out_bytes = _round_up(out_bytes)
            slot.out_handle = _create_region(f"{slot.key}_out", slot.out_bytes)
            await self._register(f"{slot.key}_out", slot.out_bytes)

    async def _register(self, name: str, size: int) -> None:
        """Registers a region with Triton, replacing a registration of the same name it still holds.

        After a failed call the slot is forgotten here (`_forget`) on the assumption that Triton was
        restarted; when it was not (a model's stub died, or one side was registered before Triton went
        away) Triton still holds the name and answered ALREADY_EXISTS, and every later call on that slot
        failed with UNAVAILABLE (seen in tests/integration/test_self_healing.py under load).
        """
        try:
            await self._client.register_system_shared_memory(name, f"/{name}", size)
        except InferenceServerException as e:
            if "already in manager" not in str(e.message()):
                raise
            await self._unregister(name)
            await self._client.register_system_shared_memory(name, f"/{name}", size)

    async def _unregister(self, name: str) -> None:
        """Unregisters a region, retrying while Triton still holds it for a request it has answered
        (refused as "currently in use"; seen right after a call, 1 in 40 times, when a forgotten slot
        is registered again at once), for at most `IN_USE_WAIT_S`."""
        deadline = time.monotonic() + IN_USE_WAIT_S
        while True:
            try:
                await self._client.unregister_system_shared_memory(name)
                return
            except InferenceServerException as e:
                if "currently in use" not in str(e.message()) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.005)

    def _forget(self, slot: _Slot) -> None:
        """Drops the slot's regions here only (the Triton that had them registered is gone)."""
        for handle in (slot.in_handle, slot.out_handle):
            if handle is not None:
                shm.destroy_shared_memory_region(handle)
        slot.in_handle = slot.out_handle = None
        slot.in_bytes = slot.out_bytes = 0

    async def _drop(self, slot: _Slot, side: str) -> None:
        handle = slot.in_handle if side == "in" else slot.out_handle
        if handle is None:
            return
        try:
            await self._unregister(f"{slot.key}_{side}")
        except InferenceServerException:
            log.warning("could not unregister %s_%s (Triton gone?)", slot.key, side)
        shm.destroy_shared_memory_region(handle)
        if side == "in":
            slot.in_handle, slot.in_bytes = None, 0
        else:
            slot.out_handle, slot.out_bytes = None, 0

    async def _infer_shm(
        self, spec: ModelSpec, slot: _Slot, arrays: list[NDArray[Any]], out_sizes: list[int], timeout_s: float
    ) -> dict[str, NDArray[Any]]:
        await self._ensure(slot, sum(a.nbytes for a in arrays), sum(out_sizes))
        request = []
        offset = 0
        for t, a in zip(spec.inputs, arrays, strict=True):
            shm.set_shared_memory_region(slot.in_handle, [a], offset=offset)
            tensor = grpcclient.InferInput(t.name, list(a.shape), t.dtype)
            tensor.set_shared_memory(f"{slot.key}_in", a.nbytes, offset=offset)
            request.append(tensor)
            offset += a.nbytes
        outputs, offsets, offset = [], [], 0
        for t, size in zip(spec.outputs, out_sizes, strict=True):
            requested = grpcclient.InferRequestedOutput(t.name)
            requested.set_shared_memory(f"{slot.key}_out", size, offset=offset)
            outputs.append(requested)
            offsets.append(offset)
            offset += size
        # `timeout` too: Triton drops a request still queued past its deadline (allow_timeout_override).
        result = await self._client.infer(
            spec.name, request, outputs=outputs, client_timeout=timeout_s, timeout=int(timeout_s * 1e6)
        )
        response = {}
        for t, start in zip(spec.outputs, offsets, strict=True):
            meta = result.get_output(t.name)
            # Copy out: the region is reused by the next request on this slot.
            response[t.name] = shm.get_contents_as_numpy(
                slot.out_handle, np.dtype(t.numpy_dtype), list(meta.shape), offset=start
            ).copy()
        return response

    async def close(self) -> None:
        for slot in self._all_slots:
            await self._drop(slot, "in")
            await self._drop(slot, "out")
        await self._client.close()
