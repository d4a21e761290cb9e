"""The README's Python example, run as written (in a scratch directory)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("### Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["32", "48"]
    assert all("ms" in line and "x oneDNN" in line for line in lines)
    assert (tmp_path / "artifacts" / "example" / "manifest.json").is_file()
    assert (tmp_path / "tuning_logs" / "example.db").is_file()


def test_job_rejects_bad_input_in_one_line():
    import pytest

    import tunekit
    from tunekit.errors import TunekitError

    for kwargs, message in (({"model": "resnet18", "onnx": "x.onnx"}, "exactly one of"),
                            ({"model": "resnet18", "res": "224x160"}, "non-square"),
                            ({"model": "nosuchnet"}, "unknown model"),
                            ({"model": "resnet18", "target": "nosuchtarget"}, "nosuchtarget")):
        with pytest.raises(TunekitError, match=message):
            tunekit.Job(**kwargs)
