"""Several processes on the CPU (gloo): torchrun runs of test.py, train.py and predict.py against one process."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ROOT, SMALL

from dhrclip import cli
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import write_mvtec_dataset
from dhrclip.engine.distributed import World

# The same settings for both kinds of run, at batch size 3 so that batches straddle classes and shards.
FLAGS = [*SMALL, "--batch_size", "3"]


def torchrun(script: str, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """21 images in 3 classes: two processes split them inside a class."""
    root = tmp_path_factory.mktemp("three")
    write_mvtec_dataset(root, ["checker", "ring", "stripes"], n_good=3, n_defect=4, n_train=1, size=(64, 80), seed=5)
    write_meta(root, mvtec_layout_index(root))
    return root


@pytest.mark.parametrize("count,unit,size", [(21, 3, 2), (20, 3, 2), (7, 1, 3), (2, 4, 3), (0, 2, 2), (10, 3, 4)])
def test_shards_cover_every_item_once_in_whole_units(count, unit, size):
    shards = [World(rank, size).shard(count, unit) for rank in range(size)]
    assert [i for s in shards for i in s] == list(range(count))
    assert all(s.start % unit == 0 for s in shards)
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= unit


def test_test_py_two_processes_give_the_single_process_metrics_exactly(tmp_path, three_classes, checkpoint,
                                                                        clip_file):
    common = ["--data_path", str(three_classes), "--checkpoint_path", str(checkpoint), "--pretrained",
              str(clip_file), "--vis", *FLAGS]
    cli.test_main(["--save_path", str(tmp_path / "one"), *common])
    torchrun("test.py", "--save_path", str(tmp_path / "two"), *common)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["classes"] == one["classes"] and two["mean"] == one["mean"]  # exactly
    assert two["timing"]["processes"] == 2 and two["timing"]["images"] == 21
    assert (tmp_path / "two" / "log.txt").read_text().count("| mean") == 1  # rank 0 alone writes
    figures = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two" / "vis").rglob("*.png"))
    assert len(figures) == 21 and figures == sorted(p.relative_to(tmp_path / "one")
                                                    for p in (tmp_path / "one" / "vis").rglob("*.png"))
    assert not list((tmp_path / "two" / "vis").glob(".maps-*"))  # scratch maps removed


def test_train_py_two_processes_with_resume_match_one_process(tmp_path, source_data, clip_file):
    common = ["--train_data_path", str(source_data), "--pretrained", str(clip_file), *FLAGS]
    cli.train_main(["--save_path", str(tmp_path / "one"), "--epoch", "3", *common])
    torchrun("train.py", "--save_path", str(tmp_path / "two"), "--epoch", "2", *common)
    torchrun("train.py", "--save_path", str(tmp_path / "two"), "--epoch", "3", "--resume", str(tmp_path / "two"),
             *common)
    one = torch.load(tmp_path / "one" / "epoch_3.pth", weights_only=False)["prompt_learner"]
    two = torch.load(tmp_path / "two" / "epoch_3.pth", weights_only=False)["prompt_learner"]
    assert one.keys() == two.keys()
    for name in one:
        assert (one[name] - two[name]).abs().max() < 1e-4, name
    assert not torch.equal(one["ctx_pos"], torch.load(tmp_path / "two" / "epoch_2.pth", weights_only=False)
                           ["prompt_learner"]["ctx_pos"])  # the resumed epoch did train
    lines = (tmp_path / "two" / "log.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"epoch [{e}/{n}]" for e, n in ((1, 2), (2, 2), (3, 3))]


def test_predict_py_two_processes_write_every_input_once_in_order(tmp_path, target_data, checkpoint, clip_file):
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted(target_data.rglob("test/*/*.png"))[:6]
    for k, source in enumerate(sources):
        (images / f"{k:02d}.png").write_bytes(source.read_bytes())
    (images / "03b.png").write_text("not an image")  # one bad file, in the middle
    common = ["--input", str(images), "--checkpoint_path", str(checkpoint), "--pretrained", str(clip_file),
              "--threshold", "0.5", *FLAGS]
    with pytest.raises(SystemExit):  # exit status 3: a file was skipped
        cli.predict_main(["--save_path", str(tmp_path / "one"), *common])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "predict.py"), "--save_path", str(tmp_path / "two"), *common], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "exitcode  : 3" in done.stderr  # the same status, through torchrun

    def rows(folder):
        with open(tmp_path / folder / "predictions.csv") as handle:
            return list(csv.DictReader(handle))

    one, two = rows("one"), rows("two")
    expected = sorted(str(p) for p in images.iterdir())
    assert [r["path"] for r in two] == expected
    assert [r["decision"] for r in two] == [r["decision"] for r in one]
    assert np.allclose([float(r["image_score"] or "nan") for r in two],
                       [float(r["image_score"] or "nan") for r in one], equal_nan=True)
    assert [bool(r["error"]) for r in two] == [p.endswith("03b.png") for p in expected]
    assert not list((tmp_path / "two").glob("predictions.rank*.csv"))
    assert len(json.loads((tmp_path / "two" / "predictions.json").read_text())["predictions"]) == 7
    assert len(list((tmp_path / "two" / "figures").glob("*.png"))) == 6


def _collectives(rank: int, size: int, folder: str) -> None:
    """One gloo process: accumulators summed across ranks, objects gathered, legacy maps to rank 0."""
    from dhrclip.engine.distributed import gather_all, gather_to_main, sum_across
    from dhrclip.metrics import PixelAccumulator

    os.environ.update(MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=size, init_method=f"file://{folder}/rendezvous")
    rng = np.random.default_rng(0)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    masks = rng.random((4, 8, 8)) > 0.8
    mine = World(rank, size).shard(4)
    acc = PixelAccumulator().update(torch.from_numpy(maps[mine.start:mine.stop]),
                                    torch.from_numpy(masks[mine.start:mine.stop]))
    sum_across(acc.state)
    whole = PixelAccumulator().update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert torch.equal(acc.state, whole.state)
    assert gather_all(rank * 10) == [0, 10]
    gathered = gather_to_main({"rank": rank})
    assert gathered == ([{"rank": 0}, {"rank": 1}] if rank == 0 else None)
    dist.destroy_process_group()


def test_collectives_under_gloo(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))  # the spawned processes import this module
    mp.spawn(_collectives, args=(2, str(tmp_path)), nprocs=2, join=True)


def test_a_numbered_gpu_is_refused_under_torchrun(monkeypatch):
    from dhrclip.engine.distributed import start
    from dhrclip.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match="one GPU") as info:
        start("cuda:1")
    assert info.value.field == "device"


def test_feature_caches_of_the_processes_on_one_machine_share_its_memory(tmp_path, monkeypatch):
    from dhrclip.engine import feature_cache

    cache = feature_cache.FeatureCache("auto", 10, torch.device("cpu"), tmp_path)
    monkeypatch.setattr(feature_cache, "_host_bytes_available", lambda: 10_000)
    assert cache._choose(4_000) == "host"  # alone: 4 kB of 10 kB free
    monkeypatch.setattr(feature_cache, "processes_on_this_machine", lambda: 4)
    assert cache._choose(4_000) == "disk"  # four processes would need 16 kB


def test_the_suite_under_two_processes_indexes_once_and_matches_one_process(tmp_path, checkpoint, clip_file):
    from layouts import replicas
    data = replicas(tmp_path / "data")
    entry = tmp_path / "suite_entry.py"  # what the dhrclip-suite console script runs
    entry.write_text("import sys\nfrom dhrclip.cli import suite_main\nsuite_main(sys.argv[1:])\n")
    common = ["--data_path", str(data), "--checkpoint_path", str(checkpoint), "--pretrained", str(clip_file),
              *FLAGS]
    torchrun(str(entry), "--save_path", str(tmp_path / "two"), *common)
    assert all((data / name / "meta.json").is_file() for name in ("ksdd2", "headct", "kvasir"))
    cli.suite_main(["--save_path", str(tmp_path / "one"), *common])
    one, two = (json.loads((tmp_path / run / "suite.json").read_text())["datasets"] for run in ("one", "two"))
    for name in ("ksdd2", "headct", "kvasir"):
        assert one[name]["status"] == two[name]["status"] == "tested"
        assert one[name]["metrics"] == two[name]["metrics"], name
