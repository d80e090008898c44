"""Build a model for a run: random initialisation, or from a pre-trained text LM.

Pre-trained init copies the transformer body and the text rows of the input and output embeddings
bit for bit, and draws the new rows (image codes, <boi>, <eoi>) by the embedding's own random-init
rule (open_lm: truncated normal, std 1/sqrt(d_model)), so an image row starts as it would in the
random-init arm. It never mean-resizes: transformers' `resize_token_embeddings` default would make
every new row nearly equal.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Iterator

import torch
from torch import nn

from harness.config.schema import RunConfig
from harness.data.vocab import VocabLayout
from harness.errors import HarnessError
from harness.model.open_lm import Architecture, OpenLM, init_std

VOCAB_PARAMS = ("tok_embeddings.weight", "output.weight")
NEW_ROWS_SEED_OFFSET = 7919  # new-row draws use their own stream, apart from the body's init


class InitError(HarnessError, ValueError):
    """Weights an init cannot start from; the message names the key and the file."""


def build_model(config: RunConfig, layout: VocabLayout, source: dict | None = None,
                alignment: dict | None = None) -> OpenLM:
    """The run's model at step 0. `source` is a loaded model file (see train.model_file),
    `alignment` a loaded alignment (see train.align)."""
    arch = Architecture.from_config(config.model, layout.size)
    torch.manual_seed(config.seed)
    model = OpenLM(arch)
    if config.init.strategy in ("pretrained", "aligned"):
        if source is None:
            raise InitError(f"init.strategy={config.init.strategy} needs a source model")
        std = config.init.new_row_std if config.init.new_row_std is not None else init_std(arch, VOCAB_PARAMS[0])
        with _naming(config, "source"):
            copy_pretrained(model, source, layout, std, seed=config.seed + NEW_ROWS_SEED_OFFSET)
    if config.init.strategy == "aligned":
        if alignment is None:
            raise InitError("init.strategy=aligned needs an alignment")
        with _naming(config, "alignment"):
            copy_aligned_rows(model, alignment, layout)
    return model


@contextlib.contextmanager
def _naming(config: RunConfig, key: str) -> Iterator[None]:
    """A file that does not fit this run (another architecture, a payload missing a tensor) fails
    naming the key and the file it was read from."""
    from harness.train.align import ALIGNMENT_FILE
    from harness.train.model_file import MODEL_FILE
    from harness.train.sources import resolve_alignment, resolve_source

    try:
        yield
    except (ValueError, KeyError, TypeError) as exc:
        path = resolve_source(config) if key == "source" else resolve_alignment(config)
        path = path / (MODEL_FILE if key == "source" else ALIGNMENT_FILE) if path.is_dir() else path
        problem = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise InitError(f"init.{key}={getattr(config.init, key)} ({path}): {problem}") from None


def copy_aligned_rows(model: OpenLM, alignment: dict, layout: VocabLayout) -> None:
    """The image-code rows of the input embedding and output projection from the alignment;
    <boi> and <eoi> keep their N(0, std) draws."""
    rows = slice(layout.image_offset, layout.image_offset + layout.codebook_size)
    state = model.state_dict()
    with torch.no_grad():
        for name, table in (("input", "tok_embeddings.weight"), ("output", "output.weight")):
            aligned = alignment["rows"][name]
            if aligned.shape != state[table][rows].shape:
                raise ValueError(f"alignment rows '{name}' have shape {tuple(aligned.shape)}, this model's image "
                                 f"rows {tuple(state[table][rows].shape)}")
            state[table][rows].copy_(aligned)


def copy_pretrained(model: OpenLM, source: dict, layout: VocabLayout, new_row_std: float, seed: int) -> None:
    state = source["state_dict"]
    source_arch = Architecture(**source["architecture"])
    _check_compatible(model.arch, source_arch, layout)
    target = model.state_dict()
    with torch.no_grad():
        for name, tensor in target.items():
            if name not in state:
                raise ValueError(f"pre-trained model lacks '{name}'")
            if name in VOCAB_PARAMS:
                tensor[: layout.text_size].copy_(state[name][: layout.text_size])
                generator = torch.Generator().manual_seed(seed + VOCAB_PARAMS.index(name))
                new_rows = tensor[layout.text_size:]
                drawn = torch.empty(new_rows.shape)
                if model.arch.init == "open_lm":
                    nn.init.trunc_normal_(drawn, std=new_row_std, a=-3 * new_row_std, b=3 * new_row_std,
                                          generator=generator)
                else:
                    drawn.normal_(std=new_row_std, generator=generator)
                new_rows.copy_(drawn)
            else:
                tensor.copy_(state[name])


def _check_compatible(arch: Architecture, source: Architecture, layout: VocabLayout) -> None:
    # Only what shapes or computes the function must agree; init and memory settings may differ.
    free = ("vocab_size", "init_std", "init", "activation_checkpointing", "attention")
    mine = {k: v for k, v in asdict(arch).items() if k not in free}
    theirs = {k: v for k, v in asdict(source).items() if k not in free}
    differ = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
    if differ:
        raise ValueError(f"pre-trained model architecture differs (source, this run): {differ}")
    if source.vocab_size < layout.text_size:
        raise ValueError(f"pre-trained vocabulary {source.vocab_size} < text vocabulary {layout.text_size}")
