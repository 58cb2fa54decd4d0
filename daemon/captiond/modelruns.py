"""Which models a command runs (`--models`, each model's `Run:`), with their clients and shared endpoint pools."""

from __future__ import annotations

import logging

from .combined import combinable, combined_model
from .config import Config, ModelConfig
from .endpoints import EndpointPool
from .errors import ConfigError, UsageError
from .model import AnswerMetrics, ModelClient
from .pipeline import ModelRun

log = logging.getLogger("captiond")


def model_runs(config: Config, models: str, connect: bool = True, watch: bool = False,
               metrics: AnswerMetrics | None = None) -> dict[str, ModelRun]:
    """Return the model types asked for with `--models` (caption, labels) that their `Run:` allows, with clients.

    `captiond run` is PhotoPrism's `vision run` (manual); `watch` runs at index time: not `manual` or `never`.
    The clients record their answers' latency in `metrics` (the daemon's).
    """
    types = list(dict.fromkeys(name.strip().lower() for name in models.split(",") if name.strip()))
    elsewhere = [name for name in types if name in ("nsfw", "face")]
    if elsewhere:
        log.warning("--models %s: PhotoPrism runs %s models itself (captiond writes captions and labels); "
                    "going on without them", models, " and ".join(elsewhere))
        types = [name for name in types if name not in elsewhere]
    unsupported = [name for name in types if name not in ("caption", "labels")]
    if unsupported or not types:
        raise UsageError(f"--models {models}: captiond runs caption and labels models (e.g. -m caption,labels)")
    chosen: dict[str, ModelConfig] = {}
    for kind in types:
        model = config.model(kind)
        if model is None:
            raise ConfigError([f"Models: every {kind} model is disabled"], str(config.path or "vision.yml"))
        if not model.usable:
            raise ConfigError([f"Models[{model.index}]: captiond speaks to ollama or openai engines, "
                               f"not {model.engine}"], str(config.path or "vision.yml"))
        if model.runs_in_watch if watch else model.should_run("manual"):
            chosen[kind] = model
        else:
            where = "the caption model's" if model.implied else f"Models[{model.index}]"
            log.warning("%s Run: %s: not run by `captiond %s`%s", where, model.run, "watch" if watch else "run",
                        " (manual models run in `captiond run` only)" if model.run == "manual" else "")
    if not chosen:
        raise ConfigError([f"Run: no {' or '.join(types)} model may run in `captiond {'watch' if watch else 'run'}`: "
                           "watch runs models whose Run is auto, always, on-index, newly-indexed, on-schedule or "
                           "on-demand; run every model but Run: never"], str(config.path or "vision.yml"))
    runs: dict[str, ModelRun] = {}
    pools: dict[tuple[str, ...], EndpointPool] = {}
    for kind, model in chosen.items():
        client = None
        if connect:
            servers = tuple(endpoint.uri for endpoint in model.service.all_endpoints())
            client = ModelClient(model, config.daemon, pool=pools.get(servers), metrics=metrics)
            pools[servers] = client.pool
        runs[kind] = ModelRun(model, client)
    if "caption" in runs and "labels" in runs and combinable(runs["caption"].model, runs["labels"].model,
                                                             config.daemon):
        model = combined_model(runs["caption"].model, runs["labels"].model)
        labels_client = runs["labels"].client
        client = None if labels_client is None else ModelClient(model, config.daemon, pool=labels_client.pool,
                                                                metrics=metrics)
        runs["combined"] = ModelRun(model, client)
    return runs


def clients(runs: dict[str, ModelRun]) -> list[ModelClient]:
    """Return the clients of the runs (none in a dry run)."""
    return [run.client for run in runs.values() if run.client is not None]
