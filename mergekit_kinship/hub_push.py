"""Upload a model folder and its card to the Hugging Face Hub (``card --push-to-hub``).

Every failure a user can meet (offline, not logged in, a malformed repo id, the Hub refusing,
no network) is one :class:`~mergekit_kinship.errors.UserError` line.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergekit_kinship.errors import UserError
from mergekit_kinship.hub import is_hub_id

_OFFLINE = "--push-to-hub: offline mode is on (HF_HUB_OFFLINE is set); unset it to push"


def push_to_hub(card_path: str | os.PathLike, repo_id: str,
                model_dir: str | os.PathLike | None = None, private: bool = False) -> str:
    """Upload the model folder ``model_dir`` (weights, tokenizer, card) to the Hub repo
    ``repo_id``, or only the card when the weights are gone. Returns the repo URL."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if "@" in repo_id or not is_hub_id(repo_id, org_required=True):
        raise UserError(f"--push-to-hub: {repo_id!r} is not a Hub repo id (owner/name)")
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        raise UserError(_OFFLINE)
    token = get_token()
    if not token:
        raise UserError("--push-to-hub: not logged in to the Hugging Face Hub "
                        "(run `hf auth login` or set HF_TOKEN)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if model_dir is not None and Path(model_dir).is_dir():
            # The card goes up on its own below, so a stale README.md in the folder never wins.
            api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), ignore_patterns=["README.md"],
                              commit_message="Upload merged model (mergekit-kinship)")
        api.upload_file(path_or_fileobj=str(card_path), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="Model card with the family tree (mergekit-kinship)")
    except OfflineModeIsEnabled:
        raise UserError(_OFFLINE) from None
    except HfHubHTTPError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--push-to-hub: the Hub refused {repo_id}: {first}") from None
    except (OSError, *_transport_errors()) as err:
        raise UserError(f"--push-to-hub: cannot reach the Hugging Face Hub ({type(err).__name__})") from None
    return f"https://huggingface.co/{repo_id}"


def _transport_errors() -> tuple:
    """Connection errors of the HTTP client huggingface_hub uses (httpx from 1.0, requests before)."""
    errors = []
    for module, name in (("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)
