# fcnseg, CPU: the same set-up scripts the tests exercise, on Debian 12.
#   docker build -t fcnseg .
#   docker run --rm -v "$PWD:/work" -w /work fcnseg train configs/demo_hela.yaml --data data/hela
FROM debian:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev python3-pip ca-certificates make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/fcnseg
COPY . .
# scripts/setup.sh installs the Caffe build dependencies (we are root), builds pycaffe into the cache
# and creates .venv with fcnseg installed; the cache lives in the image layer.
ENV FCNSEG_CACHE=/opt/fcnseg-cache
RUN bash scripts/setup.sh && rm -rf /root/.cache/pip
ENV PATH=/opt/fcnseg/.venv/bin:$PATH GLOG_minloglevel=2
ENTRYPOINT ["fcnseg"]
CMD ["--help"]
