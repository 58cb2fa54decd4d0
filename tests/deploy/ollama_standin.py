"""A stand-in for the `ollama` command in the deploy scripts' stand-in ollama/ollama image (no registry here).

`serve` runs the Ollama emulator on 0.0.0.0:11434; `list`, `show MODEL` ask the server at $OLLAMA_HOST as the
real client does; `pull MODEL` fails as the real one does when the model registry is unreachable.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def _base() -> str:
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    return host if host.startswith("http") else f"http://{host.replace('0.0.0.0', '127.0.0.1')}"


def _ask(path: str, body: dict[str, str] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(_base() + path, data=data), timeout=10) as answer:
        result = json.loads(answer.read())
    return result if isinstance(result, dict) else {}


def main(arguments: list[str]) -> int:
    """Do what `ollama COMMAND` would; return its exit code."""
    command = arguments[0] if arguments else "serve"
    try:
        if command == "serve":
            server = Path(__file__).with_name("model_server.py")
            os.execvp(sys.executable, [sys.executable, str(server), "0", "0.0.0.0", "11434"])
        if command == "list":
            for model in _ask("/api/tags").get("models") or []:
                print(model["name"] if isinstance(model, dict) else model)
            return 0
        if command == "show":
            print(json.dumps(_ask("/api/show", {"model": arguments[1]}).get("capabilities")))
            return 0
        if command == "pull":
            print("pulling manifest\nError: pull model manifest: Get \"https://registry.ollama.ai/v2/library/"
                  f"{arguments[1]}\": dial tcp: lookup registry.ollama.ai: no such host", file=sys.stderr)
            return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
