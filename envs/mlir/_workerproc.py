"""Entry point of a worker process: ``python -m envs.mlir._workerproc RFD WFD THREADS MEMORY_GB``.

Kept apart from `worker` so that running it does not import that module twice."""
import sys

from .worker import _Conn, _serve

if __name__ == "__main__":
    _serve(_Conn(int(sys.argv[1]), int(sys.argv[2])), int(sys.argv[3]), float(sys.argv[4]))
