"""What a run directory already knows, by content: model identities, kinship values and scores.

Every fact is keyed by content (:mod:`mergekit_kinship.identity`) and kept in the run directory
(journal events for identities and kinship, one file per score), so a run started again, or
``plan`` on the same directory, finds it instead of recomputing it:

- a model identity: cached per folder by its stamp (names, sizes, mtimes); a hub model's is the
  commit of its snapshot;
- a kinship value: keyed by the base's identity and the pair of identities (either order);
- a score: keyed by the model's identity and the evaluation fingerprint;
- a model's per-item results: keyed by its identity and the items fingerprint (the evaluation
  fingerprint without the stage plan: :mod:`mergekit_kinship.item_results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.errors import UserError
from mergekit_kinship.identity import content_hash, folder_identity, folder_stamp
from mergekit_kinship.rundir import RunDir


def model_folder(spec) -> str:
    """A local folder for a recipe model: its path, or its hub snapshot (downloaded once)."""
    if spec.path is not None:
        return spec.path
    from mergekit_kinship import hub

    return str(hub.snapshot(spec.hub, spec.revision))


class RunCache:
    """Identities, kinship values and scores recorded in one run directory."""

    def __init__(self, rd: RunDir, fingerprint: dict[str, Any],
                 items_fingerprint: Optional[dict[str, Any]] = None):
        self.rd = rd
        self.fingerprint = fingerprint
        self.items_fingerprint = items_fingerprint if items_fingerprint is not None else fingerprint
        self._identities = {e["path"]: e for e in rd.events("identity")}
        self._kinship: dict[str, dict[str, Optional[float]]] = {
            e["key"]: e["values"] for e in rd.events("kinship")}

    # --- identities --------------------------------------------------------------------------
    def identity(self, spec) -> str:
        """The content identity of a recipe model (see :mod:`mergekit_kinship.identity`)."""
        folder = model_folder(spec)
        if spec.hub is not None:
            from mergekit_kinship.hub import snapshot_identity

            known = snapshot_identity(spec.hub, Path(folder))
            if known is not None:
                return known
        return self.folder_identity(folder)

    def folder_identity(self, path: str) -> str:
        if not Path(path, "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        stamp = folder_stamp(path)
        cached = self._identities.get(path)
        if cached and cached["stamp"] == stamp:
            return cached["identity"]
        identity = folder_identity(path)
        self.rd.append({"event": "identity", "path": path, "stamp": stamp, "identity": identity})
        self._identities[path] = {"stamp": stamp, "identity": identity}
        return identity

    # --- scores ------------------------------------------------------------------------------
    def score_key(self, identity: str) -> str:
        return content_hash({"model": identity, "evaluation": self.fingerprint})

    def items_key(self, identity: str) -> str:
        return content_hash({"model": identity, "evaluation": self.items_fingerprint})

    def score(self, identity: str) -> Optional[dict]:
        """The recorded evaluation of the model with this identity under this fingerprint."""
        return self.rd.read_score(self.score_key(identity))

    # --- kinship -----------------------------------------------------------------------------
    @staticmethod
    def kinship_key(base_identity: str, a_identity: str, b_identity: str) -> str:
        return content_hash({"base": base_identity, "pair": sorted((a_identity, b_identity))})

    def kinship(self, key: str) -> dict[str, Optional[float]]:
        return self._kinship.get(key, {})

    def record_kinship(self, key: str, pair: list[str], values: dict[str, Optional[float]]
                       ) -> None:
        merged = {**self._kinship.get(key, {}),
                  **{k: None if v is None else float(v) for k, v in values.items()}}
        self._kinship[key] = merged
        self.rd.append({"event": "kinship", "key": key, "pair": pair, "values": merged})
