"""The shared progress helper: a tqdm bar on a terminal, lines or silence elsewhere."""
import io

from gptlite.progress import Progress, format_eta


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_a_tqdm_bar_with_the_status():
    out = _Tty()
    with Progress(10, "step", "step", stream=out) as p:
        for i in range(1, 11):
            p.update(done=i, text=f"loss {10 - i}")
    last = out.getvalue().split("\r")[-1]
    assert last.startswith("step: 100%") and "10/10" in last and "loss 0" in last


def test_a_pipe_gets_nothing_by_default_and_lines_when_asked():
    out = io.StringIO()
    p = Progress(4, "step", stream=out)
    p.update(2, text="x")
    p.close()
    assert out.getvalue() == ""
    p = Progress(4, "step", stream=out, enabled=True, lines=True, initial=1)
    p.update(done=2)  # no text: not a log step, no line
    p.update(done=4, text="loss 1.0")
    assert out.getvalue() == "step 4/4 loss 1.0 | ETA 0m00s\n"
    assert format_eta(3725) == "1h02m" and format_eta(61) == "1m01s"
