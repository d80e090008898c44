"""Whole files or none: a save that does not fit (ENOSPC) names the file and the free space, and
leaves the file it was replacing as it was. /dev/full stands in for a full disk."""

from pathlib import Path

import pytest
import torch

from harness.train.writes import NotWritten, save_whole


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_save_that_does_not_fit_names_the_file_and_keeps_the_previous_one(tmp_path):
    target = tmp_path / "state.pt"
    save_whole({"step": 1}, target, "tokenizer training state")
    (tmp_path / "state.pt.partial").symlink_to("/dev/full")  # every write there fails with ENOSPC

    with pytest.raises(NotWritten) as raised:
        save_whole({"step": 2, "big": torch.zeros(1 << 16)}, target, "tokenizer training state")

    message = str(raised.value)
    assert message.startswith(f"tokenizer training state {target} could not be written: No space left on device (")
    assert message.endswith(" free)") and "\n" not in message
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert not (tmp_path / "state.pt.partial").exists()
