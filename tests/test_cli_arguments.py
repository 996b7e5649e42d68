"""Argument errors of the `videoadapt` console script: argparse exit code 2 with the argument, the allowed values
and the received value; refused values that argparse lets through are refused by the command (exit code 1)."""

import pytest

from videoadapt.cli import _side_channel_files, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "m", "v", "q", "--max-new-tokens", "x"], "argument --max-new-tokens: must be an integer >= 1, got 'x'"),
        (["ask", "m", "v", "q", "--num-beams", "0"], "argument --num-beams: must be an integer >= 1, got 0"),
        (["visualize", "reef", "m", "v", "--question", "q", "--out", "o.png", "--max-new-tokens", "-1"],
         "argument --max-new-tokens: must be an integer >= 0, got -1"),
        (["visualize", "dynfocus", "m", "v", "--question", "q", "--out", "o.png", "--frame", "1.5"],
         "argument --frame: must be an integer >= 0, got '1.5'"),
        (["redundancy", "m.jsonl", "--clip", "c", "--fps", "fast"], "argument --fps: must be a number > 0, got 'fast'"),
        (["redundancy", "m.jsonl", "--clip", "c", "--fps", "inf"], "argument --fps: must be a finite number > 0, got inf"),
        (["extract", "m.jsonl", "--model", "m", "--output", "o", "--num-proc", "two"],
         "argument --num-proc: must be an integer >= 1, got 'two'"),
    ],
)  # fmt: skip
def test_bad_numbers_exit_2_naming_the_argument_the_range_and_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_ask_refuses_a_side_channel_named_twice():
    assert _side_channel_files(["audio=a.safetensors", "hfr=b.safetensors"]) == {
        "audio": "a.safetensors", "hfr": "b.safetensors"}  # fmt: skip
    with pytest.raises(ValueError, match=r"`--side-channel` names 'audio' twice \('a.st' and 'b.st'\)"):
        _side_channel_files(["audio=a.st", "audio=b.st"])


def test_ask_reports_a_side_channel_named_twice_with_exit_code_1(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    argv = ["ask", str(tmp_path), str(video), "q", "--side-channel", "audio=a", "--side-channel", "audio=b"]
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith("videoadapt ask: error: `--side-channel` names 'audio' twice")
