"""Progress: a bar on a terminal, plain lines in a log file."""

import io

from harness import progress as progress_module
from harness.progress import StepBar, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_plain_lines_and_a_terminal_a_bar(monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", -1.0)  # a line after every item
    lines: list[str] = []
    log_file = io.StringIO()
    assert list(progress(range(3), 3, "build", "image", log=lines.append, stream=log_file)) == [0, 1, 2]
    assert lines == ["build: 1/3 image", "build: 2/3 image", "build: 3/3 image"] and log_file.getvalue() == ""
    terminal, shown = Terminal(), []
    assert list(progress(range(3), 3, "build", "image", log=shown.append, stream=terminal)) == [0, 1, 2]
    assert shown == [] and "build" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_the_step_bar_follows_the_logged_step():
    terminal = Terminal()
    bar = StepBar("random_init/abc", 24, terminal)
    bar.show(None, "")
    bar.show(12, "loss 1.0")
    assert bar.bar.n == 12
    bar.close()
    assert "12/24" in terminal.getvalue() and "loss 1.0" in terminal.getvalue()
