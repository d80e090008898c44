"""What values a run's configuration may take: one table per kind of rule, and the rules between keys.

Composition (compose.py) calls `check` on every composed config, before anything runs. A failure is
an `Invalid` naming the key(s); compose adds where each value came from (the command line, a user
default, a jobs/ file). Every int and float of the schema has an entry in CHOICES or RANGES
(tests/config/test_compose.py holds the table to that), so a new numeric key cannot go unchecked.

Only the config is judged here: whether files exist or data is sound is the planner's concern.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterator

from harness.config.schema import RunConfig

INF = math.inf


class Invalid(Exception):
    """A value (or a combination of values) no run may have; `keys` are the keys it concerns."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


@dataclass(frozen=True)
class Range:
    """An interval; infinite ends are always open (inf and nan are never valid values)."""

    low: float = -INF
    high: float = INF
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open or self.low == -INF else value >= self.low
        below = value < self.high if self.high_open or self.high == INF else value <= self.high
        return above and below

    def __str__(self) -> str:
        left = "(" if self.low_open or self.low == -INF else "["
        right = ")" if self.high_open or self.high == INF else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


def at_least(low: float) -> Range:
    return Range(low)


def above(low: float) -> Range:
    return Range(low, low_open=True)


def between(low: float, high: float, high_open: bool = False) -> Range:
    return Range(low, high, high_open=high_open)


POSITIVE = above(0)   # > 0 (learning rates, temperatures, standard deviations)
COUNT = at_least(1)   # steps, batch sizes, parts, sizes: at least one
OPTIONAL = at_least(0)  # 0 means off / all / the default rule (see the schema's comments)
FRACTION = between(0, 1)
# Image codes are stored as int16 in the shards (harness/data/shards.py).
MAX_CODEBOOK = 2 ** 15

# Keys whose value must be one of a fixed set.
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.positional": ("rotary", "head_rotary", "none"),
    "model.attention": ("sdpa", "flash", "efficient", "math"),
    "model.init": ("open_lm", "normal"),
    "eval.fid_mode": ("clean", "legacy_tensorflow"),
    "job": ("train", "tokenize", "align", "eval_image", "eval_language", "train_tokenizer", "train_classifier"),
    "data.kind": ("synthetic", "prebuilt"),
    "data.raw.source": ("urls", "shapes", "external"),
    "data.tokenizer.image_variant": ("67M", "102M", "270M", "tiny"),
    "data.corpus": ("captions", "text", "images", "caption_text"),
    "init.strategy": ("random", "pretrained", "aligned"),
    "train.precision": ("fp32", "bf16"),
    # ZeRO-3 would partition parameters; the final model file is written from whole ones on rank 0.
    "train.zero_stage": (0, 1, 2),
    "train.preempt_signal": ("USR1", "USR2", "TERM", "INT", "HUP"),
    "launch.executor": ("local", "slurm"),
    "container.runtime": ("none", "apptainer", "docker", "podman"),
    "logging.wandb_mode": ("online", "offline", "disabled"),
}

# Every other numeric key: the interval its value (each item, for a list or dict) must lie in.
RANGES: dict[str, Range] = {
    "seed": OPTIONAL,                   # numpy seeds must be non-negative
    "pretrain_text_steps": COUNT,
    "random_init_long_steps": COUNT,
    "model.d_model": COUNT,
    "model.n_layers": COUNT,
    "model.n_heads": COUNT,
    "model.ffn_hidden": OPTIONAL,       # 0: open_lm's rule
    "model.norm_eps": Range(0, 1, low_open=True, high_open=True),
    "model.init_std": POSITIVE,
    "data.seq_len": at_least(2),        # <bos> and <eos> (or <boi> <eoi>) at least
    "data.image_size": at_least(8),     # and a multiple of the tokenizer's downsampling (see below)
    "data.codebook_size": between(2, MAX_CODEBOOK),
    "data.text_vocab_size": at_least(3),  # the three special tokens
    "data.n_train": COUNT,
    "data.n_val": COUNT,
    "data.n_text_train": COUNT,
    "data.n_text_val": COUNT,
    "data.shard_size": COUNT,
    "data.seed": OPTIONAL,
    "data.text_mix": between(0, 1, high_open=True),  # 1 would leave no image-caption sequence
    "data.raw.n_train": OPTIONAL,       # 0: no such split
    "data.raw.n_val": OPTIONAL,
    "init.new_row_std": POSITIVE,       # null: the embedding's own rule
    "train.steps": COUNT,
    "train.micro_batch": COUNT,
    "train.grad_accum": COUNT,
    "train.lr": POSITIVE,
    "train.text_loss_weight": POSITIVE,
    "train.min_lr_ratio": FRACTION,
    "train.warmup_steps": OPTIONAL,     # and fewer than train.steps (see below)
    "train.weight_decay": OPTIONAL,
    "train.betas": between(0, 1, high_open=True),  # Adam's decay rates: 1 would never forget
    "train.grad_clip": OPTIONAL,        # 0: no clipping (DeepSpeed's convention)
    "train.log_every": COUNT,
    "train.checkpoint_every_steps": OPTIONAL,
    "train.checkpoint_every_min": OPTIONAL,
    "train.keep_last": COUNT,           # 0 would prune the checkpoint a resume needs
    "train.keep_at_tokens": COUNT,
    "train.loader_workers": OPTIONAL,
    "train.collective_timeout_min": COUNT,
    "train.eval_every_steps": OPTIONAL,
    "train.eval_samples": OPTIONAL,
    "tokenize.parts": COUNT,
    "tokenize.part": OPTIONAL,          # and below tokenize.parts
    "tokenize.batch_size": COUNT,
    "align.steps": COUNT,
    "align.batch_size": at_least(2),    # contrastive: each pair needs another one as its negative
    "align.lr": POSITIVE,
    "align.temperature": POSITIVE,
    "align.eval_batch": at_least(2),
    "tokenizer_training.steps": COUNT,
    "tokenizer_training.batch_size": COUNT,
    "tokenizer_training.lr": POSITIVE,
    "tokenizer_training.warmup_steps": OPTIONAL,  # and fewer than its steps
    "tokenizer_training.beta": OPTIONAL,
    "tokenizer_training.ema_decay": between(0, 1, high_open=True),
    "tokenizer_training.restart_after": COUNT,
    "tokenizer_training.checkpoint_every": OPTIONAL,  # 0: only at the end
    "tokenizer_training.eval_images": COUNT,
    "classifier_training.steps": COUNT,
    "classifier_training.batch_size": COUNT,
    "classifier_training.lr": POSITIVE,
    "classifier_training.eval_images": COUNT,
    "eval.step": OPTIONAL,              # 0: the final model
    "eval.samples": COUNT,
    "eval.parts": COUNT,
    "eval.part": OPTIONAL,              # and below eval.parts
    "eval.batch_size": COUNT,
    "eval.loss_samples": OPTIONAL,
    "eval.temperature": OPTIONAL,       # 0: greedy
    "eval.top_k": OPTIONAL,             # 0: off
    "eval.top_p": FRACTION,             # 1: off; 0: greedy
    "eval.cfg_scale": OPTIONAL,         # 1: no guidance; 0: unconditional only
    "eval.seed": OPTIONAL,
    "eval.grid": COUNT,
    "eval.language_fewshot": OPTIONAL,
    "launch.nodes": COUNT,
    "launch.tasks_per_node": COUNT,
    "launch.gpus_per_node": OPTIONAL,   # 0: CPU nodes
    "launch.cpus_per_task": COUNT,
    "launch.mem_gb": COUNT,
    "launch.timeout_min": COUNT,
    "launch.signal_delay_s": OPTIONAL,  # and shorter than the time limit
    "launch.array_parallelism": COUNT,
    "launch.max_attempts": COUNT,       # the first submission counts
    "launch.max_failures": OPTIONAL,    # automatic retries of a failed run; 0: none
    "launch.stall_after_min": COUNT,
}

# Names that become directory or file names (runs/<experiment>/, <data_root>/<data.name>-<hash>/,
# checkpoints/<model.name>.pt): no separators, no leading dot, nothing a shell would read.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
NAME_RULE = "letters, digits, _ . - only, not starting with '.'"
NAMES = ("experiment", "scale", "model.name", "data.name", "launch.cluster", "eval.data")

# Slurm settings become `#SBATCH --key=value` lines: Slurm's own name characters only (node lists
# and feature expressions add their brackets and operators).
SLURM_NAME = r"A-Za-z0-9_.,:+@\-"
SLURM_VALUES = {
    "launch.partition": re.compile(rf"^[{SLURM_NAME}]*$"),
    "launch.account": re.compile(rf"^[{SLURM_NAME}]*$"),
    "launch.qos": re.compile(rf"^[{SLURM_NAME}]*$"),
    "launch.constraint": re.compile(rf"^[{SLURM_NAME}&|*()\[\]!]*$"),
    "launch.exclude": re.compile(rf"^[{SLURM_NAME}\[\]]*$"),
}

# Free text that may span lines (a prompt with a newline is a prompt); every other string may not
# hold control characters: a newline in a setup line, a path or a name would become its own line of
# the sbatch script.
FREE_TEXT = ("eval.prompts",)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The image tokenizer (MoVQ) downsamples by 8 in every configuration this harness builds or loads.
DOWNSAMPLING = 8


def check(config: RunConfig) -> None:
    """Raise Invalid for the first value, or combination of values, no run may have."""
    flat = flatten(dataclasses.asdict(config))
    _check_strings(flat)
    _check_choices(flat)
    _check_ranges(flat)
    for rule in RULES:
        rule(config)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not (name in RANGES or name in CHOICES):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numeric_keys() -> list[str]:
    """Every key of the schema that holds numbers (int or float, optional, or a list or dict of them)."""
    return [key for key, kind in schema_fields(RunConfig) if _is_numeric(kind)]


def schema_keys() -> list[str]:
    return [key for key, _ in schema_fields(RunConfig)]


def schema_fields(node: Any = RunConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, type) of every leaf of the schema."""
    for name, kind in typing.get_type_hints(node).items():
        if dataclasses.is_dataclass(kind):
            yield from schema_fields(kind, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", kind


def _is_numeric(kind: Any) -> bool:
    if kind is bool:
        return False
    if kind in (int, float):
        return True
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    # Optional[x], list[x] and dict[str, x] hold numbers when x does.
    return bool(args) and _is_numeric(args[-1])


def _items(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [] if value is None else [value]


def _check_strings(flat: dict[str, Any]) -> None:
    for key, value in flat.items():
        texts = [*_items(value), *(value.keys() if isinstance(value, dict) else [])]
        for text in texts:
            if isinstance(text, str) and key not in FREE_TEXT and CONTROL.search(text):
                raise Invalid(f"{key}: {text!r} holds a control character (a newline would become a line "
                              "of its own in the job script)", key)
    for key in NAMES:
        if flat[key] is not None and not NAME.match(flat[key]):
            raise Invalid(f"{key}: {flat[key]!r} is not a valid name ({NAME_RULE}: it names a directory)", key)
    for key, pattern in SLURM_VALUES.items():
        if flat[key] is not None and not pattern.match(flat[key]):
            raise Invalid(f"{key}: {flat[key]!r} holds characters Slurm does not accept here", key)


def _check_choices(flat: dict[str, Any]) -> None:
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise Invalid(f"{key}: '{flat[key]}' is not one of {', '.join(map(str, allowed))}", key)


def _check_ranges(flat: dict[str, Any]) -> None:
    for key, interval in RANGES.items():
        if key not in flat:
            raise KeyError(f"validate.RANGES names '{key}', which the schema does not have")
        value = flat[key]
        # A mapping's items are named by their own key (eval.language_fewshot.<task>).
        named = [(f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else \
            [(key, v) for v in _items(value)]
        for name, item in named:
            if item not in interval:
                raise Invalid(f"{name}: {item} is outside {interval}", name)


# --- rules between keys ------------------------------------------------------------------------

def _heads(config: RunConfig) -> None:
    model = config.model
    if model.d_model % model.n_heads:
        raise Invalid(f"model.d_model={model.d_model} is not divisible by model.n_heads={model.n_heads}",
                      "model.d_model", "model.n_heads")
    if model.positional != "none" and (model.d_model // model.n_heads) % 2:
        raise Invalid(f"model.positional={model.positional} rotates pairs of dimensions: the head width "
                      f"d_model/n_heads = {model.d_model // model.n_heads} must be even",
                      "model.d_model", "model.n_heads")


def _warmup(config: RunConfig) -> None:
    """Warmup must end before training does (strictly: a run that never leaves warmup never decays
    to train.min_lr_ratio). Checked for the section the job reads; the other sections are unused."""
    section = {"train": "train", "train_tokenizer": "tokenizer_training"}.get(config.job)
    if section is None:
        return
    settings = getattr(config, section)
    if settings.warmup_steps >= settings.steps:
        raise Invalid(f"{section}.warmup_steps={settings.warmup_steps} must be fewer than {section}.steps="
                      f"{settings.steps}", f"{section}.warmup_steps", f"{section}.steps")


def _betas(config: RunConfig) -> None:
    if len(config.train.betas) != 2:
        raise Invalid(f"train.betas: {config.train.betas} must be two numbers [beta1, beta2]", "train.betas")


def _images(config: RunConfig) -> None:
    data = config.data
    if data.image_size % DOWNSAMPLING:
        raise Invalid(f"data.image_size: {data.image_size} is not a multiple of the image tokenizer's "
                      f"downsampling ({DOWNSAMPLING})", "data.image_size")
    # <bos> caption <boi> image <eoi>, or <boi> image <eoi>: the image never is truncated.
    specials = {"captions": 3, "images": 2}.get(data.corpus)
    needed = (data.image_size // DOWNSAMPLING) ** 2 + (specials or 0)
    if specials and data.seq_len < needed:
        raise Invalid(f"data.seq_len={data.seq_len} cannot hold an image of data.image_size={data.image_size} "
                      f"({needed - specials} tokens) and its {specials} special tokens",
                      "data.seq_len", "data.image_size")


def _parts(config: RunConfig) -> None:
    for section in ("eval", "tokenize"):
        settings = getattr(config, section)
        if settings.part >= settings.parts:
            raise Invalid(f"{section}.part={settings.part} must be below {section}.parts={settings.parts}",
                          f"{section}.part", f"{section}.parts")
    if config.job == "eval_image" and config.eval.parts > config.eval.samples:
        raise Invalid(f"eval.parts={config.eval.parts} exceeds eval.samples={config.eval.samples}: a part "
                      "would generate nothing", "eval.parts", "eval.samples")
    if config.eval.untrained and config.eval.step:
        raise Invalid(f"eval.untrained=true evaluates step 0; eval.step={config.eval.step} contradicts it",
                      "eval.untrained", "eval.step")


def _launch(config: RunConfig) -> None:
    launch = config.launch
    if launch.executor == "local" and launch.nodes != 1:
        raise Invalid(f"launch.nodes={launch.nodes}: the local executor runs on one node", "launch.nodes")
    if launch.gpus_per_node and launch.tasks_per_node > launch.gpus_per_node:
        raise Invalid(f"launch.tasks_per_node={launch.tasks_per_node} exceeds launch.gpus_per_node="
                      f"{launch.gpus_per_node}: each task drives one GPU", "launch.tasks_per_node",
                      "launch.gpus_per_node")
    if launch.signal_delay_s >= launch.timeout_min * 60:
        raise Invalid(f"launch.signal_delay_s={launch.signal_delay_s} is not shorter than launch.timeout_min="
                      f"{launch.timeout_min} minutes: the checkpoint signal would come before the job starts",
                      "launch.signal_delay_s", "launch.timeout_min")


def _align(config: RunConfig) -> None:
    # Only synthetic data knows its validation size before it is built.
    if config.job == "align" and config.data.kind == "synthetic" and config.align.eval_batch > config.data.n_val:
        raise Invalid(f"align.eval_batch={config.align.eval_batch} exceeds the {config.data.n_val} validation "
                      "pairs of the data (data.n_val)", "align.eval_batch", "data.n_val")


def _neutral_knobs(config: RunConfig) -> None:
    # Both knobs act on image-caption training only; elsewhere they would change a run id and nothing else.
    for key, value, neutral in (("train.text_loss_weight", config.train.text_loss_weight, 1.0),
                                ("data.text_mix", config.data.text_mix, 0.0)):
        if value != neutral and (config.job != "train" or config.data.corpus != "captions"):
            raise Invalid(f"{key}: acts on image-caption training only; this is job '{config.job}' on "
                          f"data.corpus '{config.data.corpus}'", key)


def _freeze(config: RunConfig) -> None:
    if not config.freeze:
        return
    from harness.model.freeze import FreezeError, check_parts  # torch: only when freezing

    try:
        check_parts(config.freeze, config.model.n_layers)
    except FreezeError as exc:
        raise Invalid(f"freeze: {exc}", "freeze") from None


RULES = (_heads, _warmup, _betas, _images, _parts, _launch, _align, _neutral_knobs, _freeze)
