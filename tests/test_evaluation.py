"""The lm-eval adapter, run for real: a tiny Llama built here, scored by lm-eval on a local task.

The expected scores are computed independently with transformers (argmax of the choices'
log-likelihoods), so a wrong metric, a wrong split or a dropped ``limit`` shows up as a mismatch.
"""

import dataclasses
import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from mergekit_kinship.errors import UserError
from mergekit_kinship.evaluation.runner import evaluate
from mergekit_kinship.evaluation.scores import EvaluationResult, fitness
from mergekit_kinship.evaluation.settings import EvaluationSettings, evaluation_fingerprint
from mergekit_kinship.evaluation.tasks import validate_evaluation

TASKS = Path(__file__).parent / "data" / "tiny_mc"
TASK = "tiny_mc"


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 1-layer Llama over a character vocabulary, with its tokenizer, saved to ``folder``."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "</s>", *"0123456789+= "])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=2, bos_token_id=None,
        initializer_range=0.5,  # large weights: the choices' likelihoods differ clearly
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def expected_accuracy(model_dir: Path, limit: int | None = None) -> float:
    """Accuracy of ``model_dir`` on tiny_mc's test split, computed without lm-eval."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    docs = [json.loads(line) for line in (TASKS / "tiny_mc_test.jsonl").read_text().splitlines()]
    docs = docs[:limit] if limit else docs
    correct = 0
    for doc in docs:
        context = doc["question"] + "="
        n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        loglik = []
        for choice in doc["choices"]:
            ids = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
            loglik.append(sum(logprobs[i - 1, ids[i]].item() for i in range(n_context, len(ids))))
        correct += int(max(range(len(loglik)), key=loglik.__getitem__) == doc["answer"])
    return correct / len(docs)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def settings(**overrides) -> EvaluationSettings:
    return EvaluationSettings(**{"tasks": [TASK], "include_path": str(TASKS), "device": "cpu", **overrides})


def test_scores_a_model_as_transformers_would(tiny_model, tmp_path, monkeypatch, capfd):
    import torch.utils.collect_env

    # From another directory: the task's relative data_files must still be found.
    monkeypatch.chdir(tmp_path)
    # lm-eval's environment report (~1 s of subprocesses, and `git describe` that prints "fatal:"
    # outside a repository) is not made.
    reports = []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: reports.append(1) or "")
    result = evaluate(tiny_model, settings())
    assert reports == [] and "fatal" not in capfd.readouterr().err
    assert isinstance(result, EvaluationResult)
    assert result.scores[TASK] == pytest.approx(expected_accuracy(tiny_model))
    assert result.fitness == result.scores[TASK]
    assert result.samples == {TASK: 12}
    assert result.n_shot == {TASK: 0}
    assert result.lm_eval_version == importlib.metadata.version("lm_eval")
    assert result.seconds > 0
    # Per-item results (lm-eval's logged samples): the score is their mean. A score record
    # keeps the item counts, not the values (those go to the run directory's items/ files).
    assert sorted(result.items[TASK]) == list(range(12)) and result.items_total == {TASK: 12}
    assert sum(result.items[TASK].values()) / 12 == pytest.approx(result.scores[TASK])
    assert EvaluationResult.from_dict(json.loads(json.dumps(result.to_dict()))) == \
        dataclasses.replace(result, items={})


def test_limit_and_num_fewshot_reach_lm_eval(tiny_model):
    limited = evaluate(tiny_model, settings(limit=4))
    assert limited.samples == {TASK: 4}
    assert limited.scores[TASK] == pytest.approx(expected_accuracy(tiny_model, limit=4))

    fraction_fewshot = evaluate(tiny_model, settings(limit=0.5, num_fewshot=2))
    assert fraction_fewshot.samples == {TASK: 6}
    assert fraction_fewshot.n_shot == {TASK: 2}


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="unknown lm-eval task 'no_such_task'"):
        validate_evaluation(settings(tasks=[TASK, "no_such_task"]))


def test_metric_the_task_does_not_report_is_a_user_error(tiny_model):
    bad = settings(metrics={TASK: "acc_norm"})
    with pytest.raises(UserError, match=r"evaluation\.metrics\.tiny_mc: .* does not report 'acc_norm'"):
        validate_evaluation(bad)
    with pytest.raises(UserError, match="acc_norm"):
        evaluate(tiny_model, bad)
    validate_evaluation(settings(metrics={TASK: "acc,none"}))  # lm-eval's own key is accepted


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"weights": {"other": 1.0}}, r"evaluation\.weights: 'other' is not one of"),
        ({"metrics": {"other": "acc"}}, r"evaluation\.metrics: 'other' is not one of"),
        ({"include_path": "/no/such/folder"}, r"evaluation\.include_path: /no/such/folder"),
    ],
)
def test_settings_naming_unknown_things_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        validate_evaluation(settings(**overrides))


def test_model_without_tokenizer_is_a_user_error(tiny_model, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    with pytest.raises(UserError, match="has no tokenizer files"):
        evaluate(bare, settings())
    with pytest.raises(UserError, match="is not a folder"):
        evaluate(tmp_path / "missing", settings())


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_is_a_user_error(tiny_model):
    with pytest.raises(UserError, match="evaluation.backend: vllm is not installed"):
        evaluate(tiny_model, settings(backend="vllm"))


@pytest.mark.parametrize(
    "fields",
    [{"unknown_key": 1}, {"tasks": []}, {"limit": 0}, {"num_fewshot": -1},
     {"model_args": {"pretrained": "x"}}, {"weights": {TASK: -1.0}}, {"backend": "onnx"}],
)
def test_malformed_settings_are_rejected(fields):
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        settings(**fields)


def test_fitness_is_the_weighted_mean_over_the_tasks():
    two = EvaluationSettings(tasks=["a", "b"], weights={"a": 3.0})
    assert fitness({"a": 1.0, "b": 0.0, "ignored": 5.0}, two) == pytest.approx(0.75)
    assert fitness({"a": 0.2, "b": 0.6}, EvaluationSettings(tasks=["a", "b"])) == pytest.approx(0.4)
    with pytest.raises(KeyError):
        fitness({"a": 1.0}, two)


def test_fingerprint_follows_what_changes_a_score(tmp_path):
    base = evaluation_fingerprint(settings())
    assert base["lm_eval_version"] == importlib.metadata.version("lm_eval")
    json.dumps(base)  # JSON-able: the run directory hashes it

    for changed in [{"num_fewshot": 2}, {"limit": 4}, {"metrics": {TASK: "acc,none"}},
                    {"apply_chat_template": True}, {"model_args": {"dtype": "float32"}},
                    {"backend": "vllm"}]:
        assert evaluation_fingerprint(settings(**changed)) != base, changed
    # Weights change the fitness, not a score; batch size and device only the rounding.
    for same in [{"weights": {TASK: 2.0}}, {"batch_size": 4}, {"device": "cuda"}]:
        assert evaluation_fingerprint(settings(**same)) == base, same

    # A copy of the task folder elsewhere is the same task; an edited question is not.
    copy = tmp_path / "tasks"
    shutil.copytree(TASKS, copy)
    assert evaluation_fingerprint(settings(include_path=str(copy))) == base
    data = copy / "tiny_mc_test.jsonl"
    data.write_text(data.read_text().replace('"1+1"', '"1+2"', 1))
    assert evaluation_fingerprint(settings(include_path=str(copy))) != base


def test_scores_the_builtin_family_tasks(tmp_path, caplog):
    """The built-in family's tasks (a custom_dataset loader beside the YAML) go through evaluate()."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergekit_kinship.zoo import evaluation_settings
    from mergekit_kinship.zoo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    zoo = evaluation_settings()
    result = evaluate(tmp_path, EvaluationSettings(tasks=zoo["tasks"], include_path=zoo["include_path"],
                                                   num_fewshot=zoo["num_fewshot"], limit=5, device="cpu"))
    assert set(result.scores) == set(zoo["tasks"]) and len(zoo["tasks"]) >= 2
    assert result.samples == {task: 5 for task in zoo["tasks"]}
    assert all(0.0 <= score <= 1.0 for score in result.scores.values())
    assert result.fitness == pytest.approx(sum(result.scores.values()) / len(result.scores))
    # lm-eval's routine warnings (a custom_dataset loader; num_fewshot where a task has no default)
    # would repeat for every task of every child of a run.
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("lm_eval")]
    assert not [m for m in warned if "Custom kwargs" in m or "from None to" in m], warned
