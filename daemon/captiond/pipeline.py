"""Caption files: `Captioner.process(path)` for one file, `run_pipeline` for many at once.

One file reads like a table of contents: read what it holds → decide (caption, labels) → prepare
the image once → ask the model(s) → clean the answers → plan the tags → write them in one call.
`captiond run` (a filesystem scan) and `captiond watch` (the watcher and the state queue) both
feed `process`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .cache import CachedResult, ResultCache, cache_key
from .captions import clean_caption
from .combined import COMBINED_SCHEMA, combined_prompt, parse_combined
from .config import Config, ModelConfig
from .errors import AnswerError, ChangedMeanwhile, FileError, MetadataError, ModelSetupError
from .executor import BoundedExecutor
from .exiftool_process import Exiftool
from .imaging import PreparedImage, best_preview, is_raw, prepare_bytes, prepare_file
from .labels import (
    LABEL_SYSTEM,
    LABEL_SYSTEM_PHRASE,
    LABELS_SCHEMA,
    Label,
    parse_labels,
    select_labels,
)
from .library import containment_problem, printable, shown
from .metadata import FileMetadata, Provenance, WritePlan, current_caption, current_labels, writes_embedded
from .model import ModelClient
from .plans import merge_plans, plan_caption, plan_carried_caption, plan_keywords, plan_repaired_copies
from .sidecars import Fingerprint, fingerprint, unchanged
from .sources import Decision, decide, decide_labels, resolve_source

log = logging.getLogger(__name__)

MAX_CHANGES = 3  # times a photo or its sidecar may change under one processing before it is tried again later


class Status(StrEnum):
    """What became of one file."""

    CAPTIONED = "captioned"
    SKIPPED = "skipped"
    FAILED = "failed"
    WOULD_CAPTION = "would caption"  # a dry run


@dataclass(frozen=True)
class RunOptions:
    """What the user asked of this run."""

    source: str = "auto"  # as asked; resolved per model type by Captioner.source
    force: bool = False
    dry_run: bool = False
    count: int | None = None


@dataclass(frozen=True)
class ModelRun:
    """One model type of this run (caption or labels) and the client that reaches it (None in a dry run)."""

    model: ModelConfig
    client: ModelClient | None


@dataclass(frozen=True)
class Written:
    """What a write put in place after any re-decision (see Captioner.write_unless_changed)."""

    into_photo: bool
    caption: str
    keywords: list[str] | None
    skipped: str = ""  # why nothing was written after all


@dataclass(frozen=True)
class Outcome:
    """What happened to one file."""

    path: Path
    status: Status
    reason: str = ""
    caption: str = ""
    keywords: tuple[str, ...] | None = None  # None: no labels asked
    transient: bool = False
    crashed: bool = False
    unexpected: bool = False  # an error no check foresaw (a defect): the daemon tries a few times, then quarantines
    wrote_original: bool = False
    stages: Mapping[str, float] = field(default_factory=dict)  # seconds: read, decode, encode, request, write
    created_sidecar: bool = False  # the sidecar written did not exist before (apps must discover it)
    cached: bool = False  # the answer came from the result cache: no model call

    @property
    def failed(self) -> bool:
        """Return whether the file failed (the labels may have failed after the caption was written)."""
        return self.status == Status.FAILED

    @property
    def written(self) -> bool:
        """Return whether a caption or keywords were written (also when the labels failed after the caption)."""
        return self.status == Status.CAPTIONED or (self.status == Status.FAILED and bool(self.caption))


@dataclass
class Answers:
    """What the model(s) or the result cache gave for one photo."""

    caption: str = ""
    keywords: list[str] | None = None  # None: no labels asked, or they failed
    labels_error: FileError | None = None
    cached: set[str] = field(default_factory=set)  # the parts that came from the result cache


class Captioner:
    """Holds what processing a file needs: the models and their clients, exiftool and the run's options."""

    def __init__(self, config: Config, runs: Mapping[str, ModelRun], exiftool: Exiftool, options: RunOptions,
                 cache: ResultCache | None = None) -> None:
        self.config = config
        self.runs = dict(runs)
        self.exiftool = exiftool
        self.options = options
        self.cache = cache
        self._combining_failed = threading.Event()
        self._count_lock = threading.Lock()
        self._claimed = 0

    def process(self, path: Path, photo_changed: bool = False, replaced: int = 0) -> Outcome:
        """Caption (and label) one file if the rules allow it; return what happened (raises only ModelSetupError).

        `photo_changed` says the photo was replaced since we captioned it: our own caption is renewed.
        `replaced` counts the times the photo showed another image by the time its answer came.
        """
        stages: dict[str, float] = {}
        try:
            self.check_contained(path)
            with _timed(stages, "read"):
                metadata = self.exiftool.read(path, self.config.daemon.sidecar_name)
            embedded = writes_embedded(path, self.config.daemon.write)
            decisions = self.decide(metadata, embedded, photo_changed)
            todo = [kind for kind, decision in decisions.items() if decision.caption]
            if not todo:
                repaired = self.repair(metadata, embedded)
                reasons = [decision.reason for decision in decisions.values()] + ([repaired] if repaired else [])
                return Outcome(path, Status.SKIPPED, "; ".join(reasons))
            reason = "; ".join(decisions[kind].reason for kind in todo)
            if not replaced and not self._claim():
                return Outcome(path, Status.SKIPPED, "--count reached")
            check_writable(metadata, embedded)  # before the model is asked: its answer could not be kept
            resolution = max(self.runs[kind].model.resolution for kind in todo)
            image = self.prepare(metadata, resolution)
            if self.options.dry_run:
                return Outcome(path, Status.WOULD_CAPTION, reason)
            stages["decode"] = image.decode_seconds
            stages["encode"] = image.encode_seconds
            with _timed(stages, "request"):
                answers = self.answer(image, metadata, todo)
            caption, keywords, labels_error = answers.caption, answers.keywords, answers.labels_error
            if labels_error is not None and not caption:
                raise labels_error
            with _timed(stages, "write"):
                written = self.write_unless_changed(metadata, embedded, caption, keywords, image, photo_changed,
                                                    resolution, answers.cached)
            if written is None:  # the photo shows another image now: that one is captioned, not the old one
                if replaced + 1 >= MAX_CHANGES:
                    raise MetadataError("the photo kept being replaced while it was captioned; will try again",
                                        transient=True)
                log.info("%s was replaced while the model answered: asking about the new photo", self._name(path))
                return self.process(path, photo_changed, replaced + 1)
            if written.skipped:
                return Outcome(path, Status.SKIPPED, written.skipped, wrote_original=written.into_photo, stages=stages)
            caption, keywords = written.caption, written.keywords
            created_sidecar = not metadata.target(embedded).exists
            if labels_error is not None:  # the caption is written; the labels failed
                return dataclasses.replace(_failure(path, labels_error, "labels: ", caption),
                                           created_sidecar=created_sidecar)
            return Outcome(path, Status.CAPTIONED, reason, caption, None if keywords is None else tuple(keywords),
                           wrote_original=written.into_photo, stages=stages, created_sidecar=created_sidecar,
                           cached=bool(answers.cached))
        except FileError as error:
            return _failure(path, error)
        except OSError as exc:  # a file system refusal no check above foresaw: this file's failure, not the run's
            transient = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN)
            return _failure(path, MetadataError(f"cannot read or write: {exc.strerror or exc}", transient=transient))
        except ModelSetupError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever one file causes is that file's failure, never the run's
            log.debug("unexpected error on %s", self._name(path), exc_info=True)
            unforeseen = FileError(f"unexpected error: {type(exc).__name__}: {exc}", transient=True)
            return dataclasses.replace(_failure(path, unforeseen), unexpected=True)

    def answer(self, image: PreparedImage, metadata: FileMetadata, todo: list[str]) -> Answers:
        """Return the caption and labels asked for: from the result cache, else from the model(s)."""
        if "caption" in todo and "labels" in todo and self._combining:
            combined = self.ask_combined(image, metadata)
            if combined is not None:
                return combined
        answers = Answers()
        if "caption" in todo:
            answers.caption, cached = self.ask_caption(image, metadata)
            if cached:
                answers.cached.add("caption")
        if "labels" in todo:
            try:
                answers.keywords, cached = self.ask_labels(image, metadata)
            except FileError as error:  # a caption may still be written
                answers.labels_error = error
            else:
                if cached:
                    answers.cached.add("labels")
        return answers

    def decide(self, metadata: FileMetadata, embedded: bool, photo_changed: bool) -> dict[str, Decision]:
        """Return, per model type of this run, whether to generate and why."""
        force = self.options.force
        decisions = {}
        if "caption" in self.runs:
            decisions["caption"] = decide(current_caption(metadata), self.options.source, self.source("caption"), force,
                                          photo_changed)
        if "labels" in self.runs:
            decisions["labels"] = decide_labels(current_labels(metadata, embedded), self.source("labels"), force,
                                                photo_changed)
        return decisions

    def source(self, kind: str) -> str:
        """Return the source recorded for this model type: --source, or for `auto` the engine's own."""
        model = self.runs[kind].model
        return resolve_source(self.options.source, model.engine if model.engine in ("ollama", "openai")
                              else model.service.request_format)

    def prepare(self, metadata: FileMetadata, resolution: int) -> PreparedImage:
        """Return the JPEG for the model(s): decoded from the file, or from a RAW file's largest preview in pixels."""
        if is_raw(metadata.path):
            started = time.perf_counter()
            preview = best_preview(self.exiftool.extract_previews(metadata))
            image = prepare_bytes(preview, resolution, metadata.orientation)
            return dataclasses.replace(image, decode_seconds=time.perf_counter() - started - image.encode_seconds)
        return prepare_file(metadata.path, resolution)

    def ask_caption(self, image: PreparedImage, metadata: FileMetadata) -> tuple[str, bool]:
        """Return the cleaned caption the caption model gives for an image, and whether it came from the cache."""
        run = self.runs["caption"]
        assert run.client is not None
        prompt = self.prompt(run.model, metadata) + self._language_instruction("Answer in {}.")
        key = self._cache_key(image, "caption", run.model, prompt, run.model.system,
                              max_length=self.config.daemon.max_length)
        with self._exclusive(key):
            cached = self._cached(key)
            if cached is not None:
                return cached.caption, True
            caption = self._request_caption(image, metadata, prompt)
            self._store(key, CachedResult(caption=caption), run.model)
            return caption, False

    def _request_caption(self, image: PreparedImage, metadata: FileMetadata, prompt: str) -> str:
        """Return the cleaned caption of one model answer (asked twice if it holds none)."""
        run = self.runs["caption"]
        assert run.client is not None
        for attempt in (1, 2):
            answer = run.client.describe(image.jpeg, prompt, run.model.system, subject=self._name(metadata.path))
            try:
                return clean_caption(answer.best_text, self.config.daemon.max_length)
            except AnswerError:
                if attempt == 2:
                    raise
                log.info("%s: the model answered no caption; asking once more", self._name(metadata.path))
        raise AssertionError("unreachable")

    def ask_labels(self, image: PreparedImage, metadata: FileMetadata) -> tuple[list[str], bool]:
        """Return the keywords the labels model gives for an image (asked twice if it answers no JSON).

        The second value says whether they came from the result cache.
        """
        run = self.runs["labels"]
        assert run.client is not None
        normalize = (run.model.normalize or default_normalize(run.model.model_id)).lower()
        system = run.model.system or (LABEL_SYSTEM if normalize == "single-word" else LABEL_SYSTEM_PHRASE)
        prompt = ((self.prompt(run.model, metadata) + self._language_instruction(" Write the label names in {}."))
                  .strip() + "\n\n" + run.model.schema_instructions)  # PhotoPrism's labels.go
        key = self._cache_key(image, "labels", run.model, prompt, system, schema=LABELS_SCHEMA)
        with self._exclusive(key):
            cached = self._cached(key)
            if cached is not None and cached.labels is not None:
                return select_labels(cached.labels, self.config.thresholds, normalize), True
            labels = self._request_labels(image, metadata, prompt, system)
            self._store(key, CachedResult(labels=tuple(labels)), run.model)
        return select_labels(labels, self.config.thresholds, normalize), False

    def _request_labels(self, image: PreparedImage, metadata: FileMetadata, prompt: str, system: str) -> list[Label]:
        """Return the labels of one model answer (asked twice if it holds no JSON)."""
        run = self.runs["labels"]
        assert run.client is not None
        for attempt in (1, 2):
            answer = run.client.describe(image.jpeg, prompt, system, schema=LABELS_SCHEMA,
                                         subject=self._name(metadata.path))
            try:
                return parse_labels(answer.best_text)
            except AnswerError:
                if attempt == 2:
                    raise
                log.info("%s: the labels answer held no JSON; asking once more", self._name(metadata.path))
        raise AssertionError("unreachable")

    def ask_combined(self, image: PreparedImage, metadata: FileMetadata) -> Answers | None:
        """Return caption and labels from one request (or the cache); None when the model failed it twice.

        A model that fails the combined answer twice is asked in two requests from then on.
        """
        run = self.runs["combined"]
        assert run.client is not None
        labels_model = self.runs["labels"].model
        normalize = (labels_model.normalize or default_normalize(labels_model.model_id)).lower()
        system = labels_model.system or (LABEL_SYSTEM if normalize == "single-word" else LABEL_SYSTEM_PHRASE)
        caption_system = self.runs["caption"].model.system
        system = f"{caption_system}\n{system}" if caption_system else system
        prompt = combined_prompt(
            self.prompt(self.runs["caption"].model, metadata) + self._language_instruction("Answer in {}."),
            self.prompt(labels_model, metadata) + self._language_instruction(" Write the label names in {}."))
        max_length = self.config.daemon.max_length
        key = self._cache_key(image, "combined", run.model, prompt, system, schema=COMBINED_SCHEMA,
                              max_length=max_length)
        with self._exclusive(key):
            cached = self._cached(key)
            if cached is not None and cached.labels is not None:
                return Answers(cached.caption, select_labels(cached.labels, self.config.thresholds, normalize),
                               cached={"caption", "labels"})
            for attempt in (1, 2):
                answer = run.client.describe(image.jpeg, prompt, system, schema=COMBINED_SCHEMA,
                                             subject=self._name(metadata.path))
                try:
                    caption, labels = parse_combined(answer.best_text, max_length)
                    break
                except AnswerError as error:
                    if attempt == 2:
                        self._stop_combining(error)
                        return None
                    log.info("%s: the combined answer was unusable (%s); asking once more",
                             self._name(metadata.path), error.reason)
            self._store(key, CachedResult(caption, tuple(labels)), run.model)
        return Answers(caption, select_labels(labels, self.config.thresholds, normalize))

    @property
    def _combining(self) -> bool:
        return "combined" in self.runs and not self._combining_failed.is_set()

    def _stop_combining(self, error: AnswerError) -> None:
        if not self._combining_failed.is_set():
            log.warning("%s failed the combined caption and labels answer twice (%s): asking for caption and "
                        "labels in two requests from now on", self.runs["combined"].model.model_id, error.reason)
        self._combining_failed.set()

    def _cache_key(self, image: PreparedImage, kind: str, model: ModelConfig, prompt: str, system: str,
                   **fields: object) -> str:
        """Return the result-cache key of one request (everything that shapes the model's answer)."""
        service = model.service
        return cache_key(image.jpeg, kind, model.model_id, {
            "prompt": prompt, "system": system, "options": dict(model.options), "format": model.format,
            "think": service.think, "request_format": service.request_format,
            "language": self.config.daemon.language, **fields})

    def _exclusive(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Hold a cache key while it is answered (nothing to hold without a cache)."""
        return self.cache.exclusive(key) if self.cache is not None else contextlib.nullcontext()

    def _cached(self, key: str) -> CachedResult | None:
        """Return the cached answer for a key, unless there is no cache or --force asks for new answers."""
        if self.cache is None or self.options.force:
            return None
        return self.cache.get(key)

    def _store(self, key: str, result: CachedResult, model: ModelConfig) -> None:
        if self.cache is not None:
            self.cache.put(key, result, model.model_id)

    def prompt(self, model: ModelConfig, metadata: FileMetadata) -> str:
        """Return the model's prompt with {folder}, {date}, {camera} and {keywords} filled in where it asks."""
        prompt = model.prompt
        if "{" not in prompt:
            return prompt
        context = {"folder": self._folder(metadata.path), **metadata.context()}
        for name, value in context.items():
            prompt = prompt.replace("{" + name + "}", value or "unknown")
        return prompt

    def write_unless_changed(self, metadata: FileMetadata, embedded: bool, caption: str, keywords: list[str] | None,
                             image: PreparedImage, photo_changed: bool, resolution: int,
                             cached: Set[str] = frozenset()) -> Written | None:
        """Write, as long as the photo and its sidecars still hold what the decision was based on.

        When anything changed since they were read (a person's edit, another tool, a replaced photo),
        nothing is written: they are read again and the decision is made again, so a person's new
        caption wins and keywords merge with the new list. Return None when the photo now shows another
        image (it must be asked about again).
        """
        for _ in range(MAX_CHANGES):
            try:
                return Written(self.write(metadata, embedded, caption, keywords, cached), caption, keywords)
            except ChangedMeanwhile:
                if fingerprint(metadata.path) is None:
                    return Written(False, "", None, skipped="the photo was deleted while the model answered")
                fresh = self.exiftool.read(metadata.path, self.config.daemon.sidecar_name)
                if (fresh.fingerprints.get(metadata.path) != metadata.fingerprints.get(metadata.path)
                        and self.prepare(fresh, resolution).jpeg != image.jpeg):
                    return None
                decisions = self.decide(fresh, embedded, photo_changed)
                caption = caption if decisions.get("caption", _NOT_ASKED).caption else ""
                keywords = keywords if decisions.get("labels", _NOT_ASKED).caption else None
                metadata = fresh
                if not caption and keywords is None:
                    return Written(False, "", None, skipped="; ".join(
                        f"changed while the model answered, then {decision.reason}" for decision in decisions.values()))
        raise MetadataError("the photo or its sidecar kept changing while it was written; will try again",
                            transient=True)

    def write(self, metadata: FileMetadata, embedded: bool, caption: str, keywords: list[str] | None,
              cached: Set[str] = frozenset()) -> bool:
        """Write caption and keywords with their provenance in one exiftool call; return whether into the file.

        In embedded mode an existing sidecar of the photo gets them too: Immich, PhotoPrism and digiKam
        prefer the sidecar's values, and would otherwise go on showing the sidecar's. Raises
        ChangedMeanwhile, with nothing written, when the files no longer hold what was read. `cached` names
        the parts (caption, labels) that came from the result cache: their provenance says so.
        """
        if not unchanged(metadata.fingerprints):
            raise ChangedMeanwhile("the photo or its sidecar changed since it was read")
        self.check_contained(metadata.path)
        into_photo = False
        for target in metadata.targets(embedded):
            plan = self.plan(metadata, target.embedded, caption, keywords, cached)
            if not plan.embedded:  # the sidecar we write may be new; the one beside an embedded write exists
                self.check_contained(plan.target, missing_ok=not embedded, what="the sidecar: ")
            # The write into the target is checked against every file read, the other sidecar against its own.
            expected = metadata.fingerprints if target.embedded == embedded else _expected(metadata, plan.target)
            self.exiftool.apply(plan, expected)
            into_photo = into_photo or (plan.embedded and not plan.empty)
        return into_photo

    def plan(self, metadata: FileMetadata, embedded: bool, caption: str, keywords: list[str] | None,
             cached: Set[str] = frozenset()) -> WritePlan:
        """Return the tag changes for the photo (embedded) or its sidecar."""
        repaired = {} if caption else plan_repaired_copies(metadata, embedded)
        plan = WritePlan(metadata.target(embedded).path, embedded, repaired)
        if caption:
            provenance = Provenance(self.source("caption"), self._answering_model("caption"),
                                    cached="caption" in cached)
            plan = plan_caption(metadata, caption, provenance, embedded)
        if keywords is not None:
            provenance = Provenance(self.source("labels"), self._answering_model("labels"),
                                    cached="labels" in cached)
            plan = merge_plans(plan, plan_keywords(metadata, keywords, provenance, embedded))
            if not caption and not embedded and not plan.empty:
                plan = merge_plans(plan, plan_carried_caption(metadata))
        return plan

    def repair(self, metadata: FileMetadata, embedded: bool) -> str:
        """Replace stale copies of our caption that a person edited elsewhere; return what was done ("" if nothing)."""
        done = []
        for target in metadata.targets(embedded):
            changes = plan_repaired_copies(metadata, target.embedded)
            if changes and not self.options.dry_run:
                self.check_contained(target.path, what="" if target.embedded else "the sidecar: ")
                self.exiftool.apply(WritePlan(target.path, target.embedded, changes), _expected(metadata, target.path))
                done.append(target.path.name)
        return f"a person edited our caption: its other copies now hold their text ({', '.join(done)})" if done else ""

    def check_contained(self, path: Path, missing_ok: bool = False, what: str = "") -> None:
        """Raise a MetadataError unless the path may be read or written (see library.containment_problem)."""
        originals = self.config.daemon.originals
        problem = containment_problem(originals, path, missing_ok=missing_ok) if originals is not None else None
        if problem is not None:
            raise MetadataError(what + problem)

    def _answering_model(self, kind: str) -> str:
        """Return the model that answered this thread's request for `kind`, as the server named it."""
        run = self.runs[kind]
        return run.client.answering_model() if run.client is not None else run.model.model_id

    @property
    def count_reached(self) -> bool:
        """Return whether --count files have been taken on."""
        return self.options.count is not None and self._claimed >= self.options.count

    @property
    def capacity(self) -> int:
        """Return how many requests the run's model servers take at once."""
        return max((run.client.capacity for run in self.runs.values() if run.client is not None),
                   default=self.config.daemon.parallel)

    def _claim(self) -> bool:
        with self._count_lock:
            if self.count_reached:
                return False
            self._claimed += 1
            return True

    def _name(self, path: Path) -> str:
        """Return a photo's path relative to the originals, for log lines."""
        return shown(path, self.config.daemon.originals)

    def _folder(self, path: Path) -> str:
        originals = self.config.daemon.originals
        parent = path.parent
        if originals is not None and parent.resolve() == originals.resolve():
            return ""
        return parent.name

    def _language_instruction(self, template: str) -> str:
        language = self.config.daemon.language
        if not language:
            return ""
        return " " + template.format(LANGUAGES.get(language.lower(), language))


_NOT_ASKED = Decision(False, "not asked")

LANGUAGES = {"de": "German", "en": "English", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
             "pt": "Portuguese", "pl": "Polish", "sv": "Swedish", "da": "Danish", "nb": "Norwegian", "no": "Norwegian",
             "fi": "Finnish", "cs": "Czech", "hu": "Hungarian", "ro": "Romanian", "el": "Greek", "tr": "Turkish",
             "ru": "Russian", "uk": "Ukrainian", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "ar": "Arabic",
             "he": "Hebrew", "hi": "Hindi"}


def describe_outcome(name: str, outcome: Outcome) -> str:
    """Return the log line of a written file: its caption and keywords."""
    keywords = f" [{', '.join(outcome.keywords)}]" if outcome.keywords is not None else ""
    if outcome.caption:
        return f"captioned {name}: {outcome.caption}{keywords}"
    return f"labelled {name}:{keywords or ' (no labels above the thresholds)'}"


# Room a sidecar needs on the disk (an embedded write needs the photo's size on top): below it, nothing
# is written and the model is not asked.
MINIMUM_FREE_BYTES = 64 * 1024


def check_writable(metadata: FileMetadata, embedded: bool) -> None:
    """Raise a FileError if the caption could not be written: read-only photo or folder, or a full disk."""
    target = metadata.target(embedded)
    folder = target.path.parent
    if embedded and not metadata.path.stat().st_mode & 0o222:
        raise MetadataError("the photo is read-only (no write permission bits): not changed")
    if target.exists and (not os.access(target.path, os.W_OK) or not target.path.stat().st_mode & 0o222):
        raise MetadataError(f"{target.what} is not writable by captiond (owner or permissions): not changed")
    if not os.access(folder, os.W_OK):
        raise MetadataError(f"the folder is read-only (no write permission): {printable(str(folder))}")
    disk = os.statvfs(folder)
    needed = MINIMUM_FREE_BYTES + (metadata.path.stat().st_size if embedded else 0)
    if disk.f_bavail * disk.f_frsize < needed:
        raise MetadataError(f"no space left on the disk holding {folder}; will try again", transient=True)


def _expected(metadata: FileMetadata, target: Path) -> dict[Path, Fingerprint | None]:
    """Return the fingerprint `target` had when it was read (nothing when it was not fingerprinted)."""
    return {target: metadata.fingerprints[target]} if target in metadata.fingerprints else {}


def _failure(path: Path, error: FileError, prefix: str = "", caption: str = "") -> Outcome:
    """Return a failed outcome whose reason is one printable line (it may quote names, answers, exiftool)."""
    error.for_file(str(path))
    reason = printable(" ".join((prefix + error.reason).splitlines()))
    return Outcome(path, Status.FAILED, reason, caption, transient=error.transient,
                   crashed=bool(getattr(error, "crashed", False)))


def default_normalize(model_id: str) -> str:
    """Return PhotoPrism's default label normalisation: `phrase` for hosted models, else `single-word`."""
    hosted = ":cloud" in model_id or model_id.startswith(("gpt-", "o1", "o3", "o4"))
    return "phrase" if hosted else "single-word"


@contextmanager
def _timed(stages: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stages[stage] = time.perf_counter() - started


def run_pipeline(captioner: Captioner, paths: Iterable[Path], on_outcome: Callable[[Outcome], None],
                 gate: Callable[[threading.Event], bool] | None = None) -> None:
    """Process paths with a bounded number of files in flight (see executor.py); raise ModelSetupError if the
    model goes away.

    `gate(stop)` is called before each file and may block (quiet hours); False: stopped, skip the file.
    """
    stop = threading.Event()
    failure: list[ModelSetupError] = []

    def work(path: Path) -> None:
        if stop.is_set() or (gate is not None and not gate(stop)):
            return
        try:
            outcome = captioner.process(path)
            if not (stop.is_set() and outcome.status == Status.FAILED and outcome.transient):  # abandoned when stopping
                on_outcome(outcome)
        except ModelSetupError as error:
            failure.append(error)
            stop.set()

    executor = BoundedExecutor(captioner.capacity)
    interrupted = False
    try:
        for path in paths:
            if stop.is_set() or captioner.count_reached:
                break
            executor.submit(functools.partial(work, path))
            executor.wait_for_room()
        executor.wait()
    except KeyboardInterrupt:
        # Ctrl-C: start nothing new; the caller closes the model clients, which ends requests under way.
        interrupted = True
        stop.set()
        raise
    finally:
        if interrupted:
            executor.stop(grace=0)
        else:
            executor.close()
    if failure:
        raise failure[0]
