"""Quiet lm-eval and transformers while models are scored or tasks are built.

Only documented logging switches, each restored on exit; lm-eval and transformers are imported
inside the function, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import logging


def _routine_warning(record: logging.LogRecord) -> bool:
    """False for an lm-eval warning that every evaluation of a task with a ``custom_dataset``
    loader repeats (two lines per task and model; the built-in family's tasks have one) and that
    says nothing is wrong."""
    return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


# lm-eval 0.4 loads models with ``torch_dtype=``, which transformers 5 renamed ``dtype``: a
# deprecation between the two libraries, printed once per process, that the user cannot act on.
_TORCH_DTYPE_LOGGERS = ("transformers.configuration_utils", "transformers.modeling_utils")


def _library_deprecation(record: logging.LogRecord) -> bool:
    """False for transformers' ``torch_dtype`` deprecation that lm-eval's model loading triggers."""
    return "`torch_dtype` is deprecated" not in record.getMessage()


@contextlib.contextmanager
def quiet_libraries():
    """Silence lm-eval's INFO lines (several per task and model), its routine warning
    (:func:`_routine_warning`), transformers' ``torch_dtype`` deprecation (:func:`_library_deprecation`)
    and transformers' weight-loading bar while one model is scored:
    over a run of dozens of children they bury the run's own progress and tables. Other warnings
    and errors still show. Only documented logging switches, each restored on exit."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("lm_eval")
    routine = logging.getLogger("lm_eval.api.task")
    level, bars = logger.level, hf_logging.is_progress_bar_enabled()
    logger.setLevel(max(level, logging.WARNING))
    routine.addFilter(_routine_warning)
    for name in _TORCH_DTYPE_LOGGERS:
        logging.getLogger(name).addFilter(_library_deprecation)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        routine.removeFilter(_routine_warning)
        for name in _TORCH_DTYPE_LOGGERS:
            logging.getLogger(name).removeFilter(_library_deprecation)
        if bars:
            hf_logging.enable_progress_bar()
