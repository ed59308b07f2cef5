# dicom-node image: `dicom-node serve` by default; `dicom-node worker` with another command.
# GPU: TensorFlow's [and-cuda] extra brings CUDA 12 / cuDNN as wheels; run with
# `docker run --gpus all ...` on a host with the NVIDIA container toolkit. On a
# host without a GPU the same image runs on the CPU.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/dicom-node
COPY pyproject.toml README.md ./
COPY dicom_node ./dicom_node
COPY pipelines ./pipelines
COPY workers ./workers
RUN pip install ".[gpu]" && useradd --system --uid 10001 --home-dir /data dicomnode \
    && mkdir -p /data /etc/dicom-node && chown dicomnode /data

# The shipped config, with storage under the /data volume.
COPY config.yaml /etc/dicom-node/config.yaml
RUN sed -i 's|^  dir: var |  dir: /data |' /etc/dicom-node/config.yaml

USER dicomnode
VOLUME ["/data"]
EXPOSE 11112
STOPSIGNAL SIGTERM
ENTRYPOINT ["dicom-node"]
CMD ["serve", "--config", "/etc/dicom-node/config.yaml"]
# Scale-out worker against Redis (broker.url set in a mounted config):
#   docker run --gpus all -v cfg.yaml:/etc/dicom-node/config.yaml -v /shared:/data IMAGE \
#       worker --config /etc/dicom-node/config.yaml
