"""The typed schema of a run's configuration.

Defaults live here; the YAML files under jobs/ hold only what differs from them. Composition merges
the YAML onto this schema, so an unknown key or a wrong type is rejected with the key's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelConfig:
    """open_lm architecture: pre-norm LayerNorm, SwiGLU, no linear biases, untied embeddings."""

    name: str = "smoke"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    # SwiGLU hidden width; 0 = open_lm's rule 256 * ceil(8 * d_model / 3 / 256).
    ffn_hidden: int = 0
    # rotary | head_rotary | none. The released open_lm-1b weights were trained with head_rotary.
    positional: str = "rotary"
    norm_eps: float = 1e-5
    # Random initialisation: open_lm (its own scheme, the paper's random baseline) | normal
    # (N(0, init_std), residual outputs scaled by depth: this harness's scheme before issue #18).
    init: str = "open_lm"
    init_std: float = 0.02  # the normal scheme only
    # Recompute each layer's activations in the backward pass: memory for compute (paper scale).
    activation_checkpointing: bool = False
    # Attention kernels: sdpa (torch chooses) | flash | efficient | math. Same function, other speed.
    attention: str = "sdpa"


@dataclass
class RawDataConfig:
    """Raw image-caption webdataset shards (img2dataset's layout) that the tokenize job reads.
    Relative paths are relative to paths.data_root."""

    # Per split: a directory of .tar shards, a brace pattern (`cc12m/{00000..01242}.tar`), or
    # file:// of either. An empty split is skipped.
    train: str = ""
    val: str = ""
    # How `harness data raw` makes them: urls (fetch train_urls/val_urls, img2dataset-style TSV
    # lists) | shapes (the synthetic generator, offline) | external (made elsewhere; documented).
    source: str = "external"
    train_urls: str = ""
    val_urls: str = ""
    # Column names of a header-less url list (CC12M's published file: [url, caption]).
    url_columns: list[str] = field(default_factory=list)
    n_train: int = 0   # source=shapes only
    n_val: int = 0


@dataclass
class TokenizerConfig:
    """The tokenizers a tokenize job applies. Relative paths are relative to paths.data_root."""

    # tokenizer.json of the text BPE: GPT-NeoX-20B's at paper scale.
    text: str = ""
    pad_token: str = "<|padding|>"
    bos_token: str = "<|endoftext|>"
    eos_token: str = "<|endoftext|>"
    # SBER-MoVQGAN checkpoint (67M | 102M | 270M). `tiny`: seeded random weights of the same
    # architecture at laptop width (smoke only; labelled as such wherever it is recorded).
    image_variant: str = "67M"
    image_weights: str = ""
    # Any other MoVQ checkpoint: its original config YAML (model.params: ddconfig, embed_dim,
    # n_embed); set, it replaces image_variant's released architecture.
    image_config: str = ""


@dataclass
class DataConfig:
    """A dataset bundle: shards of image-caption pairs and of plain text sharing one text tokenizer."""

    name: str = "smoke"
    # synthetic (builds itself) | prebuilt (restored by `dvc pull` or the tokenize job)
    kind: str = "synthetic"
    # captions: <bos> caption <boi> image <eoi>     text: <bos> document <eos>
    # images: <boi> image <eoi> (unconditional)     caption_text: <bos> caption <eos> (caption LMs)
    corpus: str = "captions"
    seq_len: int = 96
    image_size: int = 64
    codebook_size: int = 1024
    text_vocab_size: int = 1024
    n_train: int = 2048
    n_val: int = 128
    n_text_train: int = 4096
    n_text_val: int = 256
    shard_size: int = 512
    seed: int = 1234
    # Synthetic data: the trained image tokenizer that encodes the images, a versioned artifact
    # (a name under harness/artifacts/, made by experiment=train_tokenizer + `harness publish`)
    # and its fingerprint. Unset: a MoVQ of seeded random weights, labelled as such.
    image_tokenizer: str = ""
    image_tokenizer_sha256: str = ""
    # Share of the training sequences that are documents of the pre-training text corpus
    # (<bos> document <eos>), interleaved into the image-caption stream; [0, 1). Not a property of
    # the dataset: the same shards serve every mix.
    text_mix: float = 0.0
    raw: RawDataConfig = field(default_factory=RawDataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class InitConfig:
    # random | pretrained | aligned (pretrained, with the image rows from an alignment run)
    strategy: str = "random"
    # The pre-trained LM (for pretrained, aligned, and the align job): an experiment name (resolved
    # to its run), `<experiment>/<run_id>`, or a model file path. Resolved to a concrete run before
    # the run id is computed, so it is part of the run id.
    source: Optional[str] = None
    # For aligned: the alignment (experiment=align) run, named the same ways.
    alignment: Optional[str] = None
    # std of the new (image and special) embedding rows; null = the embedding's own rule under
    # model.init (open_lm: truncated normal, 1/sqrt(d_model); normal: init_std).
    new_row_std: Optional[float] = None


@dataclass
class TrainConfig:
    steps: int = 150
    micro_batch: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    # Weight of each text target against an image target's 1 in the training loss (a weighted
    # token mean): 30 balances the paper's ~30:1 image:text token ratio. Logged losses stay unweighted.
    text_loss_weight: float = 1.0
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    # fp32 | bf16
    precision: str = "fp32"
    zero_stage: int = 1
    # DeepSpeed's FusedAdam (a CUDA kernel, prebuilt in the image) instead of torch's AdamW.
    fused_optimizer: bool = False
    log_every: int = 5
    # Resumable checkpoints: every N steps and/or every M minutes (0 = off), always at the end and
    # on preemption. Pruning keeps the last `keep_last` and every one taken at a listed token count.
    checkpoint_every_steps: int = 0
    checkpoint_every_min: float = 0.0
    keep_last: int = 2
    keep_at_tokens: list[int] = field(default_factory=list)
    # Batches are prepared by this many DataLoader worker processes (0: in the training process).
    loader_workers: int = 0
    # The signal that asks for checkpoint-and-exit (Slurm sends it before the time limit).
    preempt_signal: str = "USR2"
    collective_timeout_min: int = 30
    # Write the sample ids each rank reads during the first epoch (small scales only).
    log_sample_ids: bool = False
    # Held-out losses into eval/val_loss@<step>.json: every N steps (0: only at the end), over the
    # first `eval_samples` validation samples (0: all of them).
    eval_every_steps: int = 0
    eval_samples: int = 0


@dataclass
class LaunchConfig:
    """How and where a run executes: a cluster profile (jobs/cluster/) plus site settings.

    Launch-only: none of it enters the run id except the world size (nodes x tasks_per_node).
    """

    cluster: str = "local"
    # local: submitit's LocalExecutor on this machine | slurm: sbatch
    executor: str = "local"
    nodes: int = 1
    tasks_per_node: int = 2      # one task per GPU on GPU nodes
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: int = 8              # per node
    timeout_min: int = 60
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    exclusive: bool = False
    # Slurm's early warning before the time limit (--signal=USR2@<s>); recorded per rank.
    signal_delay_s: int = 120
    # Shell lines run in the sbatch script before srun: module loads, NCCL/InfiniBand settings.
    setup: list[str] = field(default_factory=list)
    # Node-local directory to stage the dataset into before training (read many, pull once).
    scratch: Optional[str] = None
    array_parallelism: int = 64
    # Attempts of one run (first submission included) before a preempted run stops requeueing.
    max_attempts: int = 5
    # Failed attempts retried automatically (requeued, resuming from the newest complete
    # checkpoint) when the cause is one a retry can cure: a rank killed by a signal, a lost node, a
    # collective timeout or NCCL error. Never a config error, a NaN stop or a failed pre-flight.
    max_failures: int = 0
    # Resubmitting a failed run keeps it off the nodes where a rank failed (not merely stopped).
    exclude_failed_nodes: bool = True
    # `harness status` calls a running run stalled after this long without a metric.
    stall_after_min: int = 15


@dataclass
class ContainerConfig:
    """What each task's trainer runs inside. Launch-only: the code itself is the run's snapshot."""

    # none | apptainer | docker | podman
    runtime: str = "none"
    # docker/podman: an image reference (tag or id); apptainer: a .sif path.
    image: str = "harness:latest"
    # More host paths to bind, "src" or "src:dst" (data and runs roots are always bound).
    extra_binds: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    """Views of a run while it runs (harness/tracking.py); metrics.jsonl stays the record. Launch-only."""

    # TensorBoard event files in <run>/tb/ (rank 0); `harness tb` prints the command to open them.
    tensorboard: bool = True
    # A Weights & Biases run with the harness run id (resumed attempts continue it).
    wandb: bool = False
    wandb_project: str = "t2i-pretrained-lm"
    wandb_entity: str = ""
    # online | offline (written under <run>/wandb/, `wandb sync` uploads it later) | disabled
    wandb_mode: str = "online"


@dataclass
class PathsConfig:
    """Roots on the submitting host; made absolute at submit. Launch-only."""

    runs_root: str = "runs"
    data_root: str = "data"


@dataclass
class AlignConfig:
    """experiment=align: contrastive alignment of image-token rows to the LM's text rows."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-2
    temperature: float = 0.07   # initial; learned (as CLIP's logit scale), capped at 1/100
    eval_batch: int = 32        # held-out retrieval among this many pairs (chance = 1/eval_batch)
    # The control: train on mismatched pairs (each image with another image's caption).
    shuffle_captions: bool = False


@dataclass
class EvalConfig:
    """experiment=eval_image: held-out losses, generation, FD/FID and CLIP score of a trained run."""

    # The trained run: an experiment (resolved to its run, which is submitted first if needed) or
    # <experiment>/<run_id>. Results go into that run's eval/ directory.
    run: Optional[str] = None
    step: int = 0                  # 0: the final model; else a kept checkpoint's step
    # The run's model before training (step 0, its own random init; random-init runs only),
    # written as eval/<name>@0.json: what a trained model's image metrics are told apart from.
    untrained: bool = False
    # Captions and reference images: a data config (coco2014_val at paper scale); null = the
    # trained run's own validation split.
    data: Optional[str] = None
    samples: int = 64              # images generated (30,000 for the paper's FID)
    parts: int = 1                 # a job array over sample chunks; the last part computes the metric
    part: int = 0                  # set per array task by the planner
    batch_size: int = 16
    loss_samples: int = 0          # held-out losses over the first N validation samples (0: all)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0
    seed: int = 0
    grid: int = 16                 # images per saved grid
    # TorchScript Inception (clean-fid's file; relative to paths.data_root) and its sha256. Unset:
    # the shapes classifier below, reported as "FD (shapes classifier)", never as FID.
    inception: str = ""
    inception_sha256: str = ""
    # How images reach Inception's 299x299: clean (clean-fid's default, PIL bicubic outside the
    # network; "clean-FID") | legacy_tensorflow (the network's own bilinear resize; "TF-FID").
    fid_mode: str = "clean"
    # Without Inception: the shapes classifier (a harness/artifacts/ name, made by
    # experiment=train_classifier) whose features give "FD (shapes classifier)"; its sha256.
    features: str = ""
    features_sha256: str = ""
    clip: str = ""                 # a transformers CLIPModel directory; unset: no CLIP score
    # experiment=eval_language, scored by lm-evaluation-harness: task names (arc_easy, hellaswag, ...;
    # datasets from the HF cache under <data_root>/hf, offline) or lm_eval task YAML files (relative
    # to paths.data_root). Synthetic data adds its world's facts_probe and few_shot_sums.
    language_tasks: list[str] = field(default_factory=list)
    # Few-shot examples per task (task name -> n); a task not named keeps its YAML's (else 0).
    language_fewshot: dict[str, int] = field(default_factory=dict)
    # Prompts answered greedily, recorded as text.
    prompts: list[str] = field(default_factory=list)


@dataclass
class TokenizeConfig:
    """experiment=tokenize: raw shards -> tokenized shards + manifest, as a job array of `parts`."""

    parts: int = 2
    # This run's part, set per array task by the planner (one run per part).
    part: int = 0
    batch_size: int = 32
    # auto: CUDA when present.
    device: str = "auto"


@dataclass
class TokenizerTrainingConfig:
    """experiment=train_tokenizer: the small scales' MoVQ, trained as a VQ autoencoder."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 20
    beta: float = 0.25          # commitment weight
    ema_decay: float = 0.99     # of the codebook's running sums
    restart_after: int = 50     # a code no latent chose for this many steps restarts at one
    checkpoint_every: int = 100
    eval_images: int = 512      # held-out round trips: PSNR, codebook usage, oracle accuracy


@dataclass
class ClassifierTrainingConfig:
    """experiment=train_classifier: the shapes classifier behind "FD (shapes classifier)"."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    eval_images: int = 512


# Jobs whose step count lives in their own config section (every other job: train.steps).
STEPS_SECTION = {"train_tokenizer": "tokenizer_training", "train_classifier": "classifier_training"}


@dataclass
class RunConfig:
    # train | tokenize | align | eval_image | eval_language | train_tokenizer | train_classifier:
    # what each task of the run's job does.
    job: str = "train"
    experiment: str = "random_init"
    scale: str = "smoke"
    seed: int = 0
    # The pre-trained LM the experiments start from (their init.source): the pretrain_text
    # experiment at small scales; the released open_lm-1b checkpoint at paper scale.
    pretrained_lm: str = "pretrain_text"
    # Steps of experiment=pretrain_text (the stand-in for open_lm's 1.6T-token pre-training: it
    # must learn its facts corpus, so it trains longer than the image-caption runs of its scale).
    pretrain_text_steps: int = 600
    # Steps of experiment=random_init_long: random_init trained long enough to draw what its
    # captions say, the run that shows the small world's image metrics see content (the arms'
    # comparisons stay at train.steps). Read only through that experiment's train.steps.
    random_init_long_steps: int = 2400
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    # Parts of the model that do not train (freezing ablations): embeddings, layernorm, attention,
    # ffn, layers:A-B. See harness/model/freeze.py.
    freeze: list[str] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    tokenizer_training: TokenizerTrainingConfig = field(default_factory=TokenizerTrainingConfig)
    classifier_training: ClassifierTrainingConfig = field(default_factory=ClassifierTrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    container: ContainerConfig = field(default_factory=ContainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    @property
    def total_steps(self) -> int:
        return getattr(self, STEPS_SECTION.get(self.job, "train")).steps

    @property
    def world_size(self) -> int:
        return self.launch.nodes * self.launch.tasks_per_node
