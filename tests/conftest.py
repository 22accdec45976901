"""Shared test set-up. Everything runs offline: tiny models are built by the tests themselves."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def family():
    """The built-in toy family (mergekit_kinship.zoo.build_family), built once into
    default_cache_dir() and reused by later test runs: the cache is keyed by the builder's config
    and code hash, so a stale family is never reused. First build: about a minute on 2 cores."""
    from mergekit_kinship.zoo import build_family

    return build_family(progress=False)
