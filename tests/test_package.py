"""The package as a user installs it: a built wheel, not the editable checkout."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_target_presets_and_exports(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("tunekit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python*/site-packages"))
    # the heavy dependencies (TVM, torch) come from this environment; tunekit itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, timeout=600, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "TUNEKIT_TARGETS"}
    tunekit = [str(venv / "bin" / "python"), "-m", "tunekit.cli"]
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import tunekit; print(tunekit.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert str(site) in where.stdout, where.stdout + where.stderr  # not the checkout

    listed = subprocess.run(tunekit + ["targets"], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr
    for name in ("host", "i7-4790k", "tr-2990wx", "cuda-sm90"):
        assert name in listed.stdout

    missing = subprocess.run(tunekit + ["targets"], capture_output=True, text=True, cwd=tmp_path,
                             env=env | {"TUNEKIT_TARGETS": "/nonexistent"}, timeout=300)
    assert missing.returncode == 0 and "host" in missing.stdout and "i7-4790k" in missing.stdout
    assert "TUNEKIT_TARGETS=/nonexistent is not a directory" in missing.stderr

    exported = subprocess.run(tunekit + ["export", "--model", "tinyconv", "--res", "32", "--out", "x"],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "x" / "tinyconv-32x32-b1.onnx").is_file()
