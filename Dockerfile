# wirestream: one image for every role (capture, processors, watcher, sinks).
#   docker build -t wirestream .
#   docker run --rm wirestream --help
# The compiled core (rust/) is built in a stage of its own: the runtime image carries the
# wheel, not the Rust toolchain.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rust ./rust
COPY wirestream ./wirestream
COPY producers ./producers
COPY processors ./processors
COPY schemas ./schemas
COPY sinks ./sinks
COPY bpf ./bpf
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim-bookworm

# bcc for live eBPF capture (Debian's python3-bpfcc; wirestream loads it from Debian's
# dist-packages by itself). Kernel headers come from the node (/lib/modules, /usr/src).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-bpfcc libbpfcc iproute2 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/wirestream-*.whl)[lake]" && rm -rf /wheels

# Processors, the watcher and the sinks run as an unprivileged user; the capture
# DaemonSet runs as root with only the capabilities it needs (deploy/kustomize).
RUN useradd --uid 10001 --create-home wirestream
USER 10001
WORKDIR /home/wirestream
ENTRYPOINT ["wirestream"]
CMD ["--help"]
