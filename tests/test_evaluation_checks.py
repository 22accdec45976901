"""What the lm-eval adapter guarantees beyond a score (issue 14): scores are checked, lm-eval is
driven without replacing any of its functions yet scores as ``simple_evaluate`` does, the
caller's random generators and lm-eval's functions are left as they were, ``demo --quiet``
prints no progress bar through the libraries' own switches, and a misspelled task is reported
against ``evaluation.tasks``."""

import ast
import json
import logging
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mergekit_kinship.errors import UserError
from mergekit_kinship.evaluation.runner import evaluate, run_lm_eval
from mergekit_kinship.evaluation.scores import check_scores
from mergekit_kinship.evaluation.settings import FEWSHOT_SEED, EvaluationSettings
from mergekit_kinship.evaluation.tasks import task_manager_for, task_specs, validate_evaluation
from test_evaluation import TASK, TASKS, build_tiny_llama, settings

PACKAGE = Path(__file__).resolve().parents[1] / "mergekit_kinship"
# Every switch that silences bars, removed so that a subprocess starts as a user's shell would.
BAR_SWITCHES = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def family_shaped_model(tmp_path_factory):
    """A random tiny Llama with the built-in family's tokenizer (scores the family's tasks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergekit_kinship.zoo.tokenizer import build_tokenizer

    folder = tmp_path_factory.mktemp("family_shaped")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def family_settings(**overrides) -> EvaluationSettings:
    from mergekit_kinship.zoo import evaluation_settings

    zoo = evaluation_settings()
    return EvaluationSettings(**{"tasks": zoo["tasks"], "include_path": zoo["include_path"],
                                 "num_fewshot": zoo["num_fewshot"], "device": "cpu", **overrides})


# ------------------------------------------------------------------------------- check_scores


@pytest.mark.parametrize(
    "metric, value, message",
    [
        ("acc", 1.7, r"models\.g1-2\.scores\.tiny_mc: 1\.7 is outside \[0, 1\], the range of acc "
                     r"\(a percentage where a fraction belongs\?\)"),
        ("acc", -0.1, r"tiny_mc: -0\.1 is outside \[0, 1\], the range of acc$"),
        ("exact_match,strict-match", 73.0, r"outside \[0, 1\], the range of exact_match"),
        ("mc2", 1.0001, "the range of mc2"),
        ("mcc", -1.5, r"outside \[-1, 1\], the range of mcc"),
        ("acc", math.nan, "nan is not a finite number"),
        ("word_perplexity", math.inf, "inf is not a finite number"),
        ("acc", True, "True is not a number"),
        ("acc", "0.5", "'0.5' is not a number"),
        ("acc", None, "None is not a number"),
        ("acc", [0.5], r"\[0\.5\] is not a number"),
    ],
)
def test_scores_out_of_range_or_not_numbers_are_refused(metric, value, message):
    where = "scores.yaml: models.g1-2.scores"
    with pytest.raises(UserError, match=message) as refused:
        check_scores({TASK: value}, EvaluationSettings(tasks=[TASK], metrics={TASK: metric}), where)
    assert str(refused.value).startswith(f"{where}.{TASK}: ") and "\n" not in str(refused.value)


def test_scores_in_range_are_returned_as_floats():
    import numpy as np

    two = EvaluationSettings(tasks=["a", "b", "c", "d"],
                             metrics={"b": "mcc", "c": "f1", "d": "word_perplexity"})
    # f1 is left unbounded on purpose: squadv2 reports it in percent.
    checked = check_scores({"a": np.float64(1.0), "b": -0.25, "c": 73, "d": 14.5, "extra": 3.0}, two, "")
    assert checked == {"a": 1.0, "b": -0.25, "c": 73.0, "d": 14.5, "extra": 3.0}
    assert all(type(value) is float for value in checked.values())
    assert check_scores({"a": 0, "b": 1}, two, "x") == {"a": 0.0, "b": 1.0}
    # A task outside the settings has no known metric: only finiteness is checked, and the entry
    # is named without a prefix when ``where`` is empty.
    with pytest.raises(UserError, match=r"^extra: nan is not a finite number$"):
        check_scores({"extra": math.nan}, two, "")
    with pytest.raises(UserError, match="is not a number"):
        check_scores({"a": np.bool_(True)}, two, "")


def test_evaluate_refuses_what_a_broken_task_reports(tiny_model, tmp_path):
    """A local task whose ``acc`` is a percentage (its own process_results): refused by name."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for data in TASKS.glob("*.jsonl"):
        (tasks / data.name).write_bytes(data.read_bytes())
    (tasks / "percent.py").write_text("def process_results(doc, results):\n    return {'acc': 50.0}\n")
    (tasks / "tiny_mc.yaml").write_text((TASKS / "tiny_mc.yaml").read_text()
                                        + "process_results: !function percent.process_results\n")
    with pytest.raises(UserError, match=rf"^model {tiny_model}: lm-eval scores\.{TASK}: 50 is outside "
                                        r"\[0, 1\], the range of acc"):
        evaluate(tiny_model, settings(include_path=str(tasks), limit=2))


# ------------------------------------------------------------------- lm-eval, driven in public


@pytest.mark.parametrize("case", ["family, zero-shot", "tiny_mc, few-shot"])
def test_scores_equal_simple_evaluates(case, family_shaped_model, tiny_model, monkeypatch, tmp_path):
    """run_lm_eval gives what lm_eval.simple_evaluate gives for the same arguments: every metric
    and standard error of every task, the documents scored and the shots used."""
    import lm_eval

    if case.startswith("family"):
        model, chosen = family_shaped_model, family_settings(limit=5)
    else:  # few-shot: the examples drawn depend on the seeds
        model, chosen = tiny_model, settings(num_fewshot=2, limit=6)
    monkeypatch.chdir(tmp_path)  # simple_evaluate's `git describe` runs here: not in a repository
    manager = task_manager_for(chosen)
    model_args = {"pretrained": str(model)}
    ours, _ = run_lm_eval(chosen, model_args, "cpu", manager)
    with task_specs(chosen, manager) as specs:
        theirs = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=specs, num_fewshot=chosen.num_fewshot,
            limit=chosen.limit, batch_size=chosen.batch_size, device="cpu",
            apply_chat_template=chosen.apply_chat_template, task_manager=manager,
            log_samples=False, fewshot_random_seed=FEWSHOT_SEED,
        )
    assert set(ours["results"]) == set(chosen.tasks)
    for key in ("results", "n-samples", "n-shot", "higher_is_better", "versions"):
        assert json.dumps(ours[key], sort_keys=True) == json.dumps(theirs[key], sort_keys=True), key
    # What simple_evaluate adds and run_lm_eval leaves out: the environment report.
    assert "pretty_env_info" in theirs and "git_hash" in theirs
    assert "pretty_env_info" not in ours and "git_hash" not in ours


def test_evaluate_leaves_random_generators_and_libraries_as_they_were(tiny_model):
    import lm_eval.evaluator
    import numpy as np
    import torch
    import tqdm.std
    from transformers.utils import logging as hf_logging

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    def seed():
        random.seed(7), np.random.seed(7), torch.manual_seed(7)

    def library():
        return {"tqdm": vars(tqdm.std.tqdm)["__init__"], "evaluate": lm_eval.evaluator.evaluate,
                "simple_evaluate": lm_eval.evaluator.simple_evaluate,
                "add_env_info": lm_eval.evaluator.add_env_info,
                "get_git_commit_hash": lm_eval.evaluator.get_git_commit_hash}

    before = library()
    bars = hf_logging.is_progress_bar_enabled()
    logger = logging.getLogger("lm_eval")
    level, filters = logger.level, list(logging.getLogger("lm_eval.api.task").filters)
    seed()
    expected = draws()
    seed()
    evaluate(tiny_model, settings(limit=2))
    assert draws() == expected
    assert hf_logging.is_progress_bar_enabled() == bars
    assert (logger.level, logging.getLogger("lm_eval.api.task").filters) == (level, filters)
    assert library() == before


def _imported_modules(tree: ast.AST) -> dict[str, str]:
    """Local name -> module, for every ``import x`` / ``import x.y as z`` / ``from x import y``."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def test_no_function_of_another_library_is_replaced_and_no_private_lm_eval_module_is_used():
    """Issue 14: no ``library.name = ...`` or ``setattr(library, ...)`` on an imported third-party
    module or class anywhere in the package, and no import of lm-eval's private modules."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = _imported_modules(tree)
        foreign = {name for name, module in imported.items() if not module.startswith("mergekit_kinship")}

        def root(node):
            while isinstance(node, ast.Attribute):
                node = node.value
            return node.id if isinstance(node, ast.Name) else None

        for node in ast.walk(tree):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("setattr", "delattr"):
                targets = [ast.Attribute(value=node.args[0], attr="?")] if node.args else []
            for target in targets:
                if isinstance(target, ast.Attribute) and root(target) in foreign:
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} "
                                    f"assigns to {imported[root(target)]}")
        for module in imported.values():
            if module.startswith("lm_eval") and any(part.startswith("_") for part in module.split(".")):
                offences.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not offences, offences


def test_lm_eval_request_methods_still_take_disable_tqdm():
    """The request bars are switched off through this argument of lm-eval's models; if lm-eval
    renames it, the bars come back (and the subprocess tests below fail): say so here first."""
    import inspect

    from lm_eval.api.registry import get_model

    for method in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        assert "disable_tqdm" in inspect.signature(getattr(get_model("hf"), method)).parameters, method


# ---------------------------------------------------------------------------- progress bars


def _environment_without_bar_switches(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in BAR_SWITCHES}
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE.parent), env.get("PYTHONPATH", "")])
    return {**env, **extra}


@pytest.mark.parametrize("quiet", [False, True])
def test_lm_eval_bars_follow_tqdm_disable(tiny_model, quiet):
    """lm-eval's request bars pass disable=False themselves; evaluate() makes them follow tqdm's
    own TQDM_DISABLE like every other bar, without touching tqdm."""
    script = textwrap.dedent(f"""
        from mergekit_kinship.evaluation.runner import evaluate
        from mergekit_kinship.evaluation.settings import EvaluationSettings
        evaluate({str(tiny_model)!r}, EvaluationSettings(tasks=[{TASK!r}], include_path={str(TASKS)!r},
                                                          device="cpu", limit=2))
    """)
    env = _environment_without_bar_switches(**({"TQDM_DISABLE": "1"} if quiet else {}))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    if quiet:
        assert "%|" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr
    else:
        assert "Running loglikelihood requests" in proc.stderr and "%|" in proc.stderr


def test_demo_quiet_prints_no_progress_bar(family, tmp_path):
    """The real command in its own process, started without any bar switch: the tables on
    stdout, and on stderr no bar of ours, tqdm's, datasets', transformers' or lm-eval's (per-task
    and request bars included)."""
    env = _environment_without_bar_switches()
    proc = subprocess.run([sys.executable, "-m", "mergekit_kinship", "demo", "-q", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "generation 1:" in proc.stdout and "Best: " in proc.stdout
    assert (tmp_path / "run").is_dir()  # it scored children: there were bars to silence
    for sign in ("%|", "it/s", "\r"):
        assert sign not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------- validation


def test_misspelled_task_is_reported_against_tasks_with_the_closest_name():
    misspelled = settings(tasks=["tiny_mcc"], metrics={TASK: "acc"}, weights={TASK: 1.0})
    with pytest.raises(UserError, match=r"^evaluation\.tasks: unknown lm-eval task 'tiny_mcc' .*"
                                        r"; did you mean 'tiny_mc'\?$"):
        validate_evaluation(misspelled)
    # A key of metrics or weights that names no listed task: the listed task it was meant to be.
    with pytest.raises(UserError, match=r"^evaluation\.weights: 'tiny_mcc' is not one of "
                                        r"evaluation\.tasks \(tiny_mc\); did you mean 'tiny_mc'\?$"):
        validate_evaluation(settings(weights={"tiny_mcc": 1.0}))
    with pytest.raises(UserError, match=r"unknown lm-eval task 'zzzz_qqq' \(not in lm-eval or in \S+\)$"):
        validate_evaluation(settings(tasks=["zzzz_qqq"]))


@pytest.mark.parametrize("quiet", [True, False])
def test_transformers_torch_dtype_deprecation_is_silenced_while_scoring(tiny_model, quiet):
    """lm-eval loads with ``torch_dtype=``, which transformers 5 warns about once per process:
    silenced inside quiet_libraries, still shown outside it (a fresh process each: warning_once)."""
    code = textwrap.dedent(f"""
        import contextlib, torch, transformers
        from mergekit_kinship.evaluation.quiet import quiet_libraries
        with (quiet_libraries() if {quiet} else contextlib.nullcontext()):
            transformers.AutoModelForCausalLM.from_pretrained({str(tiny_model)!r}, torch_dtype=torch.float32)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ("`torch_dtype` is deprecated" in out.stderr + out.stdout) is not quiet
