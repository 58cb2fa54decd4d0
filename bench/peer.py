"""photo-tagger side by side with captiond, when it is installed: `bench/run.py --only B9`.

photo-tagger (PyPI, Python 3.14 only) is looked for at $PHOTO_TAGGER_ROOT (default
/var/cache/captiond-photo-tagger/sid), a Debian chroot made by `bench/photo_tagger_setup.sh`
(root). Both tools caption the same photos through the same emulator on 127.0.0.1, one worker
each (captiond `Parallel` 1, photo-tagger `--workers 1`), sidecars, instant model; photo-tagger
asks for structured output (pydantic-ai's `final_result` tool), which the emulator answers here
with a tool call holding its usual caption.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import MODEL_NAME, MemorySampler, available_cores, model_server

import emulator

PEER_ROOT = Path(os.environ.get("PHOTO_TAGGER_ROOT", "/var/cache/captiond-photo-tagger/sid"))
PEER_EXECUTABLE = "/opt/photo-tagger/bin/photo-tagger"  # inside the chroot
PEER_WORK = "/bench"  # inside the chroot: the photos are copied here


def peer_installed() -> bool:
    """Return whether the photo-tagger chroot is there (and we may chroot: root)."""
    return (PEER_ROOT / PEER_EXECUTABLE.lstrip("/")).exists() and os.geteuid() == 0


_original_answer = emulator._Handler._answer


def _answer_with_tool_call(self: Any, kind: str, body: dict[str, Any], text: str, thinking: str, reason: str,
                           behaviour: Any, started: float) -> None:
    """An OpenAI-style answer: a call of the request's first tool when it offers tools, else the usual one."""
    tools = body.get("tools") if kind == "openai" else None
    if not tools:
        _original_answer(self, kind, body, text, thinking, reason, behaviour, started)
        return
    name = tools[0].get("function", {}).get("name", "final_result")
    arguments = {"title": "A calm scene", "description": text, "keywords": ["scene", "photo", "calm"],
                 "hierarchies": []}
    self._json(200, {
        "id": f"chatcmpl-{int(started * 1000) % 1000000}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", MODEL_NAME),
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}]}}],
        "usage": {"prompt_tokens": 600, "completion_tokens": 40, "total_tokens": 640}})


emulator._Handler._answer = _answer_with_tool_call


def run_peer(photos: list[Path], log_path: Path, workers: int = 1) -> dict[str, Any]:
    """Run photo-tagger over copies of the photos inside its chroot; return time, CPU and memory."""
    target = PEER_ROOT / PEER_WORK.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    for index, photo in enumerate(photos):
        destination = target / f"album-{index // 50:04d}" / photo.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, destination)
    with model_server(latency=0.0, parallel=workers) as server:
        command = ["chroot", str(PEER_ROOT), "env", "-i", "HOME=/root", "PATH=/usr/bin:/bin",
                   "PHOTO_TAGGER_TELEMETRY=0", PEER_EXECUTABLE, "--no-telemetry", "-i", PEER_WORK, "-r",
                   "--provider", "ollama", "--url", server.url + "/v1", "-m", MODEL_NAME, "--workers", str(workers),
                   "--write-sidecar", "--no-backup-xmp"]
        started = time.monotonic()
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            sampler = MemorySampler(process.pid).start()
            code = process.wait()
            sampler.stop()
        wall = time.monotonic() - started
        requests = len(server.generation_requests())
    sidecars = sum(1 for _ in target.rglob("*.xmp"))
    shutil.rmtree(target, ignore_errors=True)
    return {"exit_code": code, "wall_seconds": round(wall, 3), "photos": len(photos), "sidecars": sidecars,
            "requests": requests, "cpu_seconds_sampled": round(sampler.cpu_seconds + sampler.children_cpu_seconds, 2),
            "peak_rss_mb": round(sampler.peak_kilobytes / 1024, 1), "cores": available_cores()}
