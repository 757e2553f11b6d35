# fcnseg: the same set-up scripts the tests exercise, on Debian 12. CPU (default) or CUDA pycaffe:
#   docker build -t fcnseg .
#   docker run --rm -v "$PWD:/work" -w /work fcnseg train configs/demo_hela.yaml --data data/hela
#   docker build --build-arg CAFFE=cuda -t fcnseg:cuda .          # CUDA 13 from PyPI wheels, no GPU needed
#   docker run --rm --gpus all -v "$PWD:/work" -w /work fcnseg:cuda train configs/demo_hela.yaml \
#       --data data/hela --gpu 0
# The CUDA image needs only the host's NVIDIA driver (>= 580, CUDA 13.0) and the NVIDIA container toolkit.
FROM debian:bookworm
ARG CAFFE=cpu
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev python3-pip ca-certificates make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/fcnseg
COPY . .
# scripts/setup.sh installs the Caffe build dependencies (we are root), builds pycaffe into the cache
# and creates .venv with fcnseg installed; the cache lives in the image layer.
ENV FCNSEG_CACHE=/opt/fcnseg-cache FCNSEG_CAFFE=$CAFFE
RUN bash scripts/setup.sh && rm -rf /root/.cache/pip
# --gpus all mounts the host driver's libcuda into the container for these capabilities.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
ENV PATH=/opt/fcnseg/.venv/bin:$PATH GLOG_minloglevel=2
ENTRYPOINT ["fcnseg"]
CMD ["--help"]
