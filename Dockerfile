# wirestream: one image for every role (capture, processors, watcher, sinks).
#   docker build -t wirestream .
#   docker run --rm wirestream --help
FROM python:3.11-slim-bookworm

# bcc for live eBPF capture (Debian's python3-bpfcc; wirestream loads it from Debian's
# dist-packages by itself). Kernel headers come from the node (/lib/modules, /usr/src).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-bpfcc libbpfcc iproute2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY wirestream ./wirestream
COPY producers ./producers
COPY processors ./processors
COPY schemas ./schemas
COPY sinks ./sinks
COPY bpf ./bpf
RUN pip install --no-cache-dir '.[lake]' && rm -rf /src

# Processors, the watcher and the sinks run as an unprivileged user; the capture
# DaemonSet runs as root with only the capabilities it needs (deploy/kustomize).
RUN useradd --uid 10001 --create-home wirestream
USER 10001
WORKDIR /home/wirestream
ENTRYPOINT ["wirestream"]
CMD ["--help"]
