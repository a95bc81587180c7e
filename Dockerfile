# Serving image for edge/cloud GPUs: CUDA runtime + ONNX Runtime GPU + TensorRT.
# Build:  docker build -t clda-deploy .
# Run:    docker run --gpus all -p 8000:8000 -v $PWD/runs/default/export:/models clda-deploy
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY clda_deploy ./clda_deploy
COPY serving ./serving
# onnxruntime-gpu and the CPU onnxruntime wheel install the same module: keep only the GPU one.
# openvino runs the CPU variants (f32/bf16 ONNX, the INT8 IR) that passed their gate.
RUN pip install ".[serve,gpu,openvino]" \
 && pip uninstall -y onnxruntime \
 && pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.18"

ENV CLDA_MODELS=/models CLDA_HOST=0.0.0.0 CLDA_PORT=8000
EXPOSE 8000
CMD ["python", "-m", "serving", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
