# priorlab production images (GPU hosts). Not buildable on the CPU dev machines (no Docker engine);
# keep it plain. Targets:
#   docker build --target export  -t priorlab-export  .   # ONNX models + configs into /models
#   docker build --target triton  -t priorlab-triton  .   # NVIDIA Triton + the model repository
#   docker build --target gateway -t priorlab-gateway .   # the asyncio gRPC gateway (no torch)
#   docker build --target worker  -t priorlab-worker  .   # Restore (DIP) worker on CUDA PyTorch
# A compose file for one host would run: redis:7, triton (GPU), gateway (PRIORLAB_REDIS_URL), worker (GPU).
# Triton 24.08 carries onnxruntime 1.18 with TensorRT 10.3; its Python is 3.10.

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.08-py3
ARG PYTORCH_IMAGE=pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime

# ---- export: checkpoints -> ONNX -> model_repository (CPU is enough) --------------------------
FROM python:3.11-slim AS export
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps -r requirements.lock --extra-index-url https://download.pytorch.org/whl/cpu
COPY priorlab ./priorlab
COPY contract ./contract
COPY colorizers ./colorizers
COPY export ./export
COPY model_repository ./model_repository
# `python -m priorlab` is the `priorlab` command, run from the source tree: the packages keep their
# data files (checkpoints, contract assets) beside them, as in a checkout.
RUN python -m priorlab export --repository /models

# ---- triton: NVIDIA's server with the native onnxruntime backend (TensorRT accelerator, FP16) --
FROM ${TRITON_IMAGE} AS triton
COPY --from=export /models /models
EXPOSE 8000 8001 8002
# configs/gpu.pbtxt of every model: onnxruntime backend, KIND_GPU, TensorRT FP16, engine cache.
CMD ["tritonserver", "--model-repository=/models", "--model-config-name=gpu", \
     "--exit-on-error=true", "--strict-readiness=true"]

# ---- gateway: decoding, Lab, annealed mean, encoding; talks to Triton over gRPC --------------
FROM python:3.11-slim AS gateway
WORKDIR /app
COPY requirements.lock ./
# The gateway never imports torch: install everything but it (and the Triton server wheel).
RUN grep -vE '^(torch|nvidia-pytriton|onnxscript|onnx-ir)==' requirements.lock > gateway.lock \
 && pip install --no-cache-dir --no-deps -r gateway.lock
COPY priorlab ./priorlab
COPY contract ./contract
COPY protos ./protos
COPY service ./service
RUN python -m grpc_tools.protoc -I protos --python_out=service/pb --grpc_python_out=service/pb protos/priorlab/v1/*.proto \
 && sed -i 's/^from priorlab\.v1 import/from service.pb.priorlab.v1 import/' service/pb/priorlab/v1/*.py \
 && touch service/pb/priorlab/__init__.py service/pb/priorlab/v1/__init__.py
ENV PYTHONPATH=/app PRIORLAB_HOST=0.0.0.0 PRIORLAB_PORT=50051 PRIORLAB_TRITON_URL=triton:8001 \
    PRIORLAB_METRICS_PORT=9090
EXPOSE 50051 9090
USER nobody
CMD ["python", "-m", "priorlab", "serve"]

# ---- worker: Deep Image Prior jobs from the Redis bus, on CUDA PyTorch -----------------------
FROM ${PYTORCH_IMAGE} AS worker
WORKDIR /app
COPY requirements.lock ./
RUN grep -E '^(numpy|pillow|simplejpeg|redis|protobuf|grpcio|grpcio-tools|prometheus_client|scipy)==' requirements.lock > worker.lock \
 && pip install --no-cache-dir -r worker.lock
COPY priorlab ./priorlab
COPY contract ./contract
COPY protos ./protos
COPY service ./service
RUN python -m grpc_tools.protoc -I protos --python_out=service/pb --grpc_python_out=service/pb protos/priorlab/v1/*.proto \
 && sed -i 's/^from priorlab\.v1 import/from service.pb.priorlab.v1 import/' service/pb/priorlab/v1/*.py \
 && touch service/pb/priorlab/__init__.py service/pb/priorlab/v1/__init__.py
# GOMP_SPINCOUNT: see service/launch/worker.py (long spin-waits stall when the cores are shared).
ENV PYTHONPATH=/app REDIS_URL=redis://redis:6379/0 GOMP_SPINCOUNT=10000
EXPOSE 9101
USER nobody
# One slot per visible GPU; point more workers (any machine) at the same Redis to scale.
CMD ["sh", "-c", "exec python -m priorlab worker --redis \"$REDIS_URL\" --metrics-port 9101"]
