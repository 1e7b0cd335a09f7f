"""wirestream: network observability as stream processing on Kafka (README.md)."""

import os

# numpy's OpenBLAS starts a server thread per core when numpy is imported, and each one
# spins for ~0.1 s of CPU before it sleeps. wirestream does no linear algebra, and a run
# of `analyze` imports numpy in four processes: ~0.25 s of CPU of a small capture's ~1.2 s
# went to those spins (bench/README.md). Set before any module imports numpy; the
# processes a command starts inherit it; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
