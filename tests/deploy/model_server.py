"""The Ollama emulator (tests/emulator.py) as a standalone model server for the deploy scripts.

Usage: python3 model_server.py [LATENCY_SECONDS [HOST [PORT]]]. Listens on HOST (default 127.0.0.1) and PORT
(default: a free one), prints the port on the first line, and logs one line per generation request; serves
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator import OllamaEmulator  # noqa: E402 - the tests folder is not a package


def main() -> None:
    """Serve until told to stop."""
    latency = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(0))
    emulator = OllamaEmulator(latency=latency, host=host)
    emulator._port = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # a fixed port only for a stand-in container
    with emulator as server:
        print(server.port, flush=True)
        seen = 0
        try:
            while True:
                requests = server.generation_requests()
                for request in requests[seen:]:
                    print(f"generation request {request.path}", flush=True)
                seen = len(requests)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
