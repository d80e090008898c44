"""Text tokenizer: a byte-level BPE in the `tokenizers` format (GPT-NeoX-20B's tokenizer.json at
paper scale; trained here from the smoke corpora at smoke and micro scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ("<pad>", "<bos>", "<eos>")


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> Tokenizer:
    """Train a byte-level BPE with the special tokens first (ids 0, 1, 2) and save it to path."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(str(path))
    return tokenizer


def load(path: Path) -> Tokenizer:
    """A dataset's tokenizer.json; a missing or malformed file is a HarnessError naming it."""
    from harness.errors import HarnessError

    if not path.is_file():
        raise HarnessError(f"text tokenizer {path} does not exist (the dataset's tokenizer.json; restore the "
                           "dataset with `dvc pull data.dvc`, or rebuild it)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise HarnessError(f"text tokenizer {path} is unreadable: {' '.join(str(exc).split())}") from None


def load_configured(path: Path, pad: str, bos: str, eos: str) -> tuple[Tokenizer, dict[str, int]]:
    """A configured tokenizer.json (GPT-NeoX-20B's at paper scale) and the ids of its specials.
    Errors are HarnessErrors naming the file or the token."""
    from harness.errors import HarnessError

    if not path.is_file():
        raise HarnessError(f"text tokenizer {path} does not exist (data.tokenizer.text; GPT-NeoX-20B's "
                           "tokenizer.json is in the Hugging Face repo EleutherAI/gpt-neox-20b)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise HarnessError(f"text tokenizer {path} is unreadable: {' '.join(str(exc).split())}") from None
    ids = {}
    for role, token in (("pad", pad), ("bos", bos), ("eos", eos)):
        ids[role] = tokenizer.token_to_id(token)
        if ids[role] is None:
            raise HarnessError(f"text tokenizer {path} has no token {token!r} (data.tokenizer.{role}_token)")
    return tokenizer, ids


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    ids = {name.strip("<>"): tokenizer.token_to_id(name) for name in SPECIALS}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return ids
