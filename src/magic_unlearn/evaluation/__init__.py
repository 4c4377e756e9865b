"""Multiple-choice evaluation (lm-evaluation-harness compatible) and its differentiable loss.

task = load_task("mmlu", num_fewshot=5)          # or hazard_qa with world=DIR, a file, ...
                                                 # (named tasks: the TASKS registry)
res = evaluate(model, tokenizer, task, fmt="letter")
res.acc, res.per_subject, res.predictions, res.correct_loss

m = Measurement("hazard_qa", build_mcq_batch(tokenizer, task, fmt="cloze"))
loss = m(model)                                  # == res.mean_correct_loss, differentiable
"""

from magic_unlearn.evaluation.evaluator import (
    EvalResult,
    evaluate,
    forward_logits,
    log_softmax,
    pad_token_id,
    score_choices,
)
from magic_unlearn.evaluation.measure import MCQBatch, Measurement, build_mcq_batch, mcq_loss
from magic_unlearn.evaluation.prompts import (
    build_context,
    build_requests,
    doc_to_text,
    encode_requests,
    model_max_length,
)
from magic_unlearn.evaluation.run import EvalConfig, format_table, run_eval
from magic_unlearn.evaluation.tasks import (
    BENCHMARK_TASKS,
    CLOZE_DESCRIPTION,
    FORMATS,
    LETTER_DESCRIPTION,
    LETTERS,
    MMLU_SUBJECTS,
    TASK_NAMES,
    TASKS,
    WMDP_BIO_ROBUST_CONFIGS,
    WORLD_TASKS,
    Task,
    TaskRequest,
    TaskSpec,
    as_task,
    default_benchmarks_root,
    get_task_spec,
    load_mmlu,
    load_task,
    load_wmdp_bio,
    load_wmdp_bio_robust,
    read_questions,
    register_task,
    validate_question,
    validate_questions,
)

__all__ = [
    "BENCHMARK_TASKS",
    "CLOZE_DESCRIPTION",
    "FORMATS",
    "LETTERS",
    "LETTER_DESCRIPTION",
    "MMLU_SUBJECTS",
    "TASK_NAMES",
    "TASKS",
    "WMDP_BIO_ROBUST_CONFIGS",
    "WORLD_TASKS",
    "EvalConfig",
    "EvalResult",
    "MCQBatch",
    "Measurement",
    "Task",
    "TaskRequest",
    "TaskSpec",
    "as_task",
    "build_context",
    "build_mcq_batch",
    "build_requests",
    "default_benchmarks_root",
    "doc_to_text",
    "encode_requests",
    "evaluate",
    "forward_logits",
    "get_task_spec",
    "load_mmlu",
    "load_task",
    "load_wmdp_bio",
    "load_wmdp_bio_robust",
    "log_softmax",
    "mcq_loss",
    "model_max_length",
    "pad_token_id",
    "read_questions",
    "register_task",
    "run_eval",
    "score_choices",
    "format_table",
    "validate_question",
    "validate_questions",
]
