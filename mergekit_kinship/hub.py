"""Hugging Face Hub models: what counts as a hub id, and a local snapshot of one.

One resolver for the whole package: kinship, pre-flight checks, evaluation and the run's model
identities all read the snapshot :func:`snapshot` returns (weights, configs and tokenizer files
only, downloaded once into the Hugging Face cache, then served from it offline). Children's
mergekit YAML keeps the hub id itself, so that it stays portable.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

from mergekit_kinship.errors import UserError

# org/name, or a legacy single name (gpt2); an optional @revision is split off by split_revision.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
# What a recipe's bare string must look like to be taken for a hub repo (not a relative folder).
ORG_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")

_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]


def split_revision(ref: str) -> tuple[str, Optional[str]]:
    """``org/name@rev`` -> (``org/name``, ``rev``); no ``@``: revision None."""
    repo, sep, revision = str(ref).partition("@")
    return repo, (revision or None) if sep else None


def is_hub_id(ref: str, *, org_required: bool = False) -> bool:
    repo, _ = split_revision(ref)
    return bool((ORG_NAME if org_required else HUB_ID).match(repo))


def snapshot(repo: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Path:
    """A local folder with the repo's weights (safetensors, else ``.bin``), configs and tokenizer.

    Needs the network the first time, the Hugging Face cache afterwards. huggingface_hub's retry
    messages (a dozen lines offline) are silenced; any failure is one UserError line.
    """
    from huggingface_hub import snapshot_download

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache_dir,
                                   allow_patterns=_FILES)
        if not any(Path(folder).glob("*.safetensors")):  # an older repository: .bin only
            folder = snapshot_download(repo, revision=revision, cache_dir=cache_dir,
                                       allow_patterns=_FILES + ["*.bin"])
    except Exception as err:  # offline, gated, misspelled: the user's to fix
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(f"{repo}{'@' + revision if revision else ''}: not a local folder and "
                        f"could not be fetched from the hub ({type(err).__name__}"
                        f"{': ' + first if first else ''})") from None
    finally:
        hub_logger.setLevel(level)
    return Path(folder)


def snapshot_identity(repo: str, folder: Path) -> Optional[str]:
    """``hub:org/name@<commit>`` when ``folder`` is a snapshot of the Hugging Face cache (named by
    the commit it holds: a moved branch gives a new identity), else None."""
    commit = Path(folder).name
    return f"hub:{repo}@{commit}" if COMMIT.match(commit) else None
