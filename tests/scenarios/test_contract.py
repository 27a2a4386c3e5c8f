"""A checkpoint is a contract: its settings come back in test, predict and the Python API."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ODD_FLAGS, ROOT, RUNTIME
from PIL import Image

from dhrclip import DHRCLIP, cli
from dhrclip.data.synthetic import synthetic_image


def metrics_of(path):
    return json.loads((Path(path) / "results.json").read_text())["classes"]




def test_test_py_without_model_flags_equals_every_flag_restated(tmp_path, odd_checkpoint, clip_file, target_data):
    common = ["--data_path", str(target_data), "--checkpoint_path", str(odd_checkpoint), *RUNTIME]
    cli.test_main([*common, "--save_path", str(tmp_path / "bare")])
    cli.test_main([*common, "--save_path", str(tmp_path / "full"), "--pretrained", str(clip_file), *ODD_FLAGS])
    assert metrics_of(tmp_path / "bare") == metrics_of(tmp_path / "full")
    saved = json.loads((tmp_path / "bare" / "results.json").read_text())
    assert saved["config"]["features_list"] == [1, 3] and saved["config"]["sigma"] == 2
    cli.test_main([*common, "--save_path", str(tmp_path / "other"), "--features_list", "3"])
    assert metrics_of(tmp_path / "other") != metrics_of(tmp_path / "bare")  # the flags are not ignored


def test_predict_py_with_three_flags_gives_the_api_maps(tmp_path, odd_checkpoint, clip_file):
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    images = {"a.png": synthetic_image("grain", 50, 70, rng), "b.png": synthetic_image("stripes", 64, 40, rng)}
    for name, img in images.items():
        Image.fromarray(img).save(tmp_path / "in" / name)
    cli.predict_main(["--checkpoint_path", str(odd_checkpoint), "--pretrained", str(clip_file),
                      "--input", str(tmp_path / "in"), "--save_path", str(tmp_path / "out"), "--device", "cpu"])
    rows = {Path(r["path"]).name: r for r in
            json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]}

    model = DHRCLIP.from_checkpoint(odd_checkpoint, pretrained=str(clip_file), device="cpu")
    from_paths = model.predict([tmp_path / "in" / name for name in images])
    from_arrays = model.predict(list(images.values()))
    for (name, img), by_path, by_array in zip(images.items(), from_paths, from_arrays):
        saved = np.load(tmp_path / "out" / "maps" / f"{name.replace('.', '_')}.npy")
        assert by_path.anomaly_map.shape == img.shape[:2] and by_path.anomaly_map.dtype == np.float32
        assert np.array_equal(saved, by_path.anomaly_map.astype(np.float16))
        assert rows[name]["image_score"] == by_path.score and rows[name]["map_max"] == by_path.map_max
        assert np.allclose(by_array.anomaly_map, by_path.anomaly_map, atol=1e-6)  # an array is the same picture
    single = model.predict(Image.fromarray(images["a.png"]))
    assert np.allclose(single.anomaly_map, from_paths[0].anomaly_map, atol=1e-5)






























def test_readme_api_example_runs(tmp_path, monkeypatch, checkpoint, target_data):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "runs" / "trained_on_mvtec").mkdir(parents=True)
    shutil.copy(checkpoint / "epoch_1.pth", tmp_path / "runs" / "trained_on_mvtec" / "epoch_15.pth")
    (tmp_path / "my_parts").mkdir()
    part = synthetic_image("disk", 60, 80, np.random.default_rng(0))
    Image.fromarray(part).save(tmp_path / "my_parts" / "part_001.png")
    shutil.copytree(target_data, tmp_path / "data" / "visa")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "results" / "visa" / "results.json").is_file()


def test_installed_commands_and_help_without_torch(tmp_path):
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "dhrclip-test"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "(default: results)" in proc.stdout and "--print_config" in proc.stdout
    for script in ("train.py", "test.py", "predict.py", "demo.py"):
        proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], capture_output=True, text=True,
                              cwd=ROOT)
        assert proc.returncode == 0 and "usage:" in proc.stdout, script
        assert not re.search(r"\|\s+torch$", proc.stderr, re.M), f"{script} --help imports torch"


def test_pip_install_gives_a_package_that_imports_from_anywhere(tmp_path):
    """A plain (non-editable) install of the project: the package, its version, its entry points."""
    source, target = tmp_path / "source", tmp_path / "site"  # a copy, so the build leaves the checkout alone
    shutil.copytree(ROOT / "dhrclip", source / "dhrclip", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    assert (target / "dhrclip" / "detector" / "facade.py").is_file() and not (target / "dhrclip" / "tests").exists()
    code = "import dhrclip, sys; print(dhrclip.__version__, dhrclip.__file__, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                          capture_output=True, text=True, cwd=tmp_path)
    version, where, torch_loaded = proc.stdout.split()
    assert version == "0.2.0" and where.startswith(str(target)) and torch_loaded == "False"
    entry_points = next(target.glob("dhrclip-*.dist-info")) / "entry_points.txt"
    assert "dhrclip-predict = dhrclip.cli:predict_main" in entry_points.read_text()














