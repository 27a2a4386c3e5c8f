"""The benchmark scripts run end to end at toy sizes and print their JSON."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT


def run_json(*argv):
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_bench_metrics_reports_all_fields():
    result = run_json("scripts/bench_metrics.py", "--size", "48", "--legacy_images", "2")
    assert set(result) == {"pixels", "seconds_all_metrics", "peak_rss_mb", "legacy_seconds_per_image",
                           "speedup_vs_legacy"}
    assert result["pixels"] == 1725 * 48 * 48


def test_pipeline_benchmark_runs_on_cpu_with_a_tiny_model(clip_file, tmp_path):
    result = run_json("scripts/benchmark.py", "--pretrained", str(clip_file), "--image_size", "56",
                      "--patch_image_size", "70", "--target_image_size", "112", "--features_list", "2", "4",
                      "--dpam", "3", "--depth", "3", "--images", "8", "--naive_images", "2", "--image_px", "64",
                      "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--work_dir", str(tmp_path))
    for key in ("test_images_per_s", "naive_test_images_per_s", "train_images_per_s_first_epoch",
                "train_images_per_s_cached"):
        assert result[key] > 0
    assert result["device"] == "cpu" and result["precision"] == "float32"


def test_bench_metrics_streams_at_scale_with_accumulators():
    result = run_json("scripts/bench_metrics.py", "--size", "32", "--stream", "--scale", "2")
    assert result["images"] == 2 * 1725 and result["pixels"] == 2 * 1725 * 32 * 32
    assert result["seconds_all_metrics"] > 0 and result["peak_rss_mb"] > 0


def test_scaleout_benchmark_runs_under_torchrun():
    out = subprocess.run([sys.executable, "scripts/bench_scaleout.py", "--processes", "2", "--images_per_class", "2",
                          "--epochs", "1", "--batch_size", "4"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    runs = [json.loads(line) for line in out.strip().splitlines()]
    assert [(r["command"], r["processes"]) for r in runs] == [("train.py", 2), ("test.py", 2)]
    assert runs[1]["images"] == 8 and runs[1]["inference_images_per_s"] > 0


def test_grid_benchmark_and_figure_run(tmp_path):
    out = subprocess.run([sys.executable, "scripts/bench_grid.py", "--images", "1", "--batch_size", "2",
                          "--num_workers", "0", "--device", "cpu"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    runs = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["grid"] for r in runs] == ["fixed", "auto"]
    assert runs[0]["tiles"] == 4 * 4 and runs[1]["tiles"] == 8 + 8 + 6 + 4  # the grids of the four shapes
    subprocess.run([sys.executable, "scripts/grid_figure.py", "--output", str(tmp_path / "grid.png")], cwd=ROOT,
                   check=True)
    import cv2
    assert cv2.imread(str(tmp_path / "grid.png")).shape[1] == 1200


def test_fewshot_benchmark_runs():
    out = subprocess.run([sys.executable, "scripts/bench_fewshot.py", "--shots", "0", "2", "--images", "2",
                          "--batch_size", "2", "--device", "cpu"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    runs = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["k"] for r in runs] == [0, 2] and runs[1]["bank_tokens_per_layer"] > 0
    assert all(r["ms_per_image"] > 0 for r in runs)


def test_deploy_benchmark_runs():
    pytest.importorskip("onnxruntime")
    out = subprocess.run([sys.executable, "scripts/bench_deploy.py", "--models", "tiny", "--batch_sizes", "1",
                          "--images", "1", "--rounds", "1", "--runtimes", "pytorch", "onnxruntime", "--markdown"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    runs = [json.loads(line) for line in out.strip().splitlines() if line.startswith('{"model"')]
    assert [r["runtime"] for r in runs] == ["pytorch", "onnxruntime"] and all(r["images_per_s"] > 0 for r in runs)
    table = [line for line in out.splitlines() if line.startswith("| tiny |")]
    eager, onnx = (line.strip("| ").split(" | ") for line in table)
    assert eager[1:] == ["PyTorch eager, fp32", str(runs[0]["images_per_s"]), "1.00"]
    assert onnx[-1] == f"{runs[1]['images_per_s'] / runs[0]['images_per_s']:.2f}"
