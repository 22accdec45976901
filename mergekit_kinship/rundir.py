"""The run directory: everything an evolution run knows, keyed by content, safe to kill.

Layout (``RUN`` is the directory given to ``plan`` / ``evolve``)::

    RUN/recipe.yaml            copy of the recipe as last run (validated, absolute paths)
    RUN/journal.jsonl          append-only log, one JSON event a line, fsync'd
    RUN/lock                   held (flock) by the one ``evolve`` working here
    RUN/yaml/<child>.yaml      each child's mergekit YAML, runnable with ``mergekit-yaml``
    RUN/models/<child>/        merged weights; renamed into place only when complete
    RUN/scores/<key>.json      one evaluation; key = hash(model identity + evaluation fingerprint)
    RUN/items/<key>.json       one model's per-item results; key = hash(model identity + the
                               evaluation fingerprint without the stage plan): item_results.py
    RUN/summary.json           the run summary (cards and report read only this)
    RUN/plan/                  what ``plan`` wrote (next generation's YAML + plan.json)

What counts as done is decided by content, never by a folder merely existing: a merged child is
a folder whose marker names its child id (written before the atomic rename); a score is a file
whose key matches the model identity and evaluation fingerprint. Every file is written to a
temporary name, fsync'd and renamed, so a kill at any moment leaves either the old state or the
new one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from mergekit_kinship import atomic_io
from mergekit_kinship.errors import UserError

KEEP_CHOICES = ("best", "survivors", "all")

# --- fault hook: tests stop this process at a named point -------------------------------------
_fault_hook: Optional[Callable[[str], None]] = None


def set_fault_hook(hook: Optional[Callable[[str], None]]) -> None:
    """Install ``hook(point)``, called at every :func:`checkpoint` of this process (None removes it).

    Tests install one that SIGKILLs the process the n-th time a point is reached, to prove that a
    run killed mid-merge, mid-evaluation or mid-journal-line resumes exactly. Nothing else
    installs one: a user's run has no fault hook, whatever its environment.
    """
    global _fault_hook
    _fault_hook = hook


def checkpoint(point: str) -> None:
    """A named point where an installed fault hook runs: ``merge`` (weights written, not yet
    renamed into place), ``evaluate`` (scored, not yet recorded), ``journal`` (half a journal line
    written)."""
    if _fault_hook is not None:
        _fault_hook(point)


# --- the run directory -------------------------------------------------------------------------

# Events that RunDir.append collects instead of writing (see collect_events); None: write.
_collected: Optional[list] = None


@contextmanager
def collect_events():
    """Collect this process's journal events in a list instead of appending them to the journal.

    A remote worker (the Ray executor) runs a job inside this block and hands the events to the
    driver, which stays the journal's only writer: appends to one file from several machines on
    shared storage can overwrite each other (NFS emulates O_APPEND on the client). Not for
    concurrent use by several threads of one process.
    """
    global _collected
    previous, _collected = _collected, []
    try:
        yield _collected
    finally:
        _collected = previous


class RunDir:
    """One run directory. Methods are small and each does its own atomic write."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.journal_path = self.path / "journal.jsonl"
        self.recipe_path = self.path / "recipe.yaml"
        self.summary_path = self.path / "summary.json"
        self.yaml_dir = self.path / "yaml"
        self.models_dir = self.path / "models"
        self.scores_dir = self.path / "scores"
        self.items_dir = self.path / "items"
        self.plan_dir = self.path / "plan"
        self._lock_fh = None

    def create(self) -> "RunDir":
        try:
            for d in (self.path, self.yaml_dir, self.models_dir, self.scores_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # read-only, no permission, a file in the way: the user's to fix
            raise UserError(f"{self.path}: cannot use it as a run directory "
                            f"({err.strerror or err}); choose another --run-dir") from None
        return self

    # locking
    def lock(self) -> None:
        """Hold the run directory for this process; a second ``evolve`` gets a UserError."""
        self.create()
        fh = open(self.path / "lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{self.path} is in use by another evolve ({holder}); "
                                f"wait for it to finish or use another --run-dir") from None
            raise
        # flock dies with its process, so a lock file left by a killed or crashed evolve (its
        # pid line still there) is taken over here without any pid or host guessing.
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh
        self.repair_journal()

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self):
        self.lock()
        return self

    def __exit__(self, *exc):
        self.unlock()

    # journal
    def append(self, event: dict) -> None:
        """Append one event; fsync'd before returning, so it survives power loss.

        Inside :func:`collect_events` the event is collected instead (it keeps this pid).
        """
        if _collected is not None:
            _collected.append({"pid": os.getpid(), **event})
            return
        data = (json.dumps({"pid": os.getpid(), **event}, sort_keys=True) + "\n").encode()
        with open(self.journal_path, "ab") as fh:
            if _fault_hook is not None:
                # Half a line on disk when the hook kills us (as a power loss mid-write would).
                fh.write(data[:len(data) // 2])
                fh.flush()
                checkpoint("journal")
                data = data[len(data) // 2:]
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def repair_journal(self) -> Optional[str]:
        """Drop a torn last journal line (a kill or power loss mid-append); call with the lock.

        Only the last line can be torn: every append is one write, fsync'd before the next. The
        torn bytes are kept in ``journal.torn`` and a warning goes to stderr. Returns them
        (decoded), or None when the journal was whole. A bad line before the last is not a torn
        write; :meth:`events` reports it.
        """
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return None
        body, _, tail = data.rpartition(b"\n")
        if not tail and body:  # ends with a newline: the last line may still be garbage
            body, _, tail = body.rpartition(b"\n")
            try:
                json.loads(tail)
                return None
            except ValueError:
                pass
        elif not tail:
            return None
        keep = body + b"\n" if body else b""
        with open(self.path / "journal.torn", "ab") as fh:
            fh.write(tail + b"\n")
        with open(self.journal_path, "r+b") as fh:
            fh.truncate(len(keep))
            fh.flush()
            os.fsync(fh.fileno())
        text = tail.decode("utf-8", "replace")
        print(f"warning: {self.journal_path}: dropped a torn last line ({len(tail)} bytes, "
              f"kept in journal.torn): the process writing it was killed", file=sys.stderr)
        return text

    def events(self, kind: Optional[str] = None) -> list[dict]:
        """Journal events in order; a torn last line (killed mid-write) is skipped, a corrupt line
        before it is a :class:`UserError` naming the line."""
        if not self.journal_path.exists():
            return []
        out = []
        lines = self.journal_path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                event = json.loads(line)
            except ValueError:
                if number == len(lines):
                    continue  # torn by a kill; repair_journal drops it once the lock is held
                raise UserError(f"{self.journal_path}: line {number} is not a JSON event "
                                f"(corrupt journal; only the last line can be torn by a "
                                f"crash): fix or delete that line") from None
            if kind is None or event.get("event") == kind:
                out.append(event)
        return out

    # files
    def write_text(self, path: Path, text: str) -> None:
        """Write ``text`` to ``path`` atomically (:func:`mergekit_kinship.atomic_io.write_text`)."""
        atomic_io.write_text(path, text)

    def write_json(self, path: Path, data: Any) -> None:
        atomic_io.write_json(path, data)

    def model_dir(self, child_id: str) -> Path:
        return self.models_dir / child_id

    def yaml_path(self, child_id: str) -> Path:
        return self.yaml_dir / f"{child_id}.yaml"

    def score_path(self, score_key: str) -> Path:
        return self.scores_dir / f"{score_key}.json"

    def read_score(self, score_key: str) -> Optional[dict]:
        """A finished evaluation with this key, or None."""
        try:
            record = json.loads(self.score_path(score_key).read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("score_key") == score_key else None

    def clean_partials(self) -> None:
        """Remove half-written merges left by a killed process (never used, never trusted)."""
        if self.models_dir.exists():
            for d in self.models_dir.glob(".partial-*"):
                shutil.rmtree(d, ignore_errors=True)
        # Temporary files of write_text from a killed process (called with the lock held,
        # before any job runs, so no live writer owns one).
        for folder in (self.path, self.yaml_dir, self.scores_dir, self.items_dir):
            atomic_io.remove_stale_temporaries(folder)

    def prune(self, keep_ids: Iterable[str]) -> list[str]:
        """Delete merged weights of every child not in ``keep_ids``; YAML and scores stay."""
        keep = set(keep_ids)
        removed = []
        if not self.models_dir.exists():
            return removed
        for d in sorted(self.models_dir.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
                shutil.rmtree(d)
                removed.append(d.name)
        if removed:
            self.append({"event": "pruned", "children": removed})
        return removed
