"""Time test.py and train.py in one process and under torchrun with N processes, on the same data.

Writes a synthetic MVTec-layout dataset and a tiny random CLIP (or uses
``--pretrained``), then runs each command once per process count and prints
one JSON line per run: wall seconds (start-up included), and for test.py the
images/s of the inference pass from results.json. With several processes on
the CPU every process gets one thread (torchrun's default); one process uses
all threads, so on the CPU the comparison is of the same cores split two ways.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(processes: int, script: str, args: list[str]) -> float:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    began = time.perf_counter()
    subprocess.run([*launcher, str(ROOT / script), *args], cwd=ROOT, check=True, env=os.environ,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images_per_class", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrained", default=None, help="weights file (default: a tiny random CLIP)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dhrclip_scaleout_"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> None:
    """Write the data and weights into ``work``, then time every command and process count."""
    from dhrclip.data.indexing import mvtec_layout_index, write_meta
    from dhrclip.data.synthetic import save_openai_format, tiny_clip, write_mvtec_dataset

    data = work / "data"
    n_defect = args.images_per_class * 5 // 8
    write_mvtec_dataset(data, ["stripes", "disk", "checker", "ring"], n_good=args.images_per_class - n_defect,
                        n_defect=n_defect, n_train=1, size=(256, 256), seed=0)
    write_meta(data, mvtec_layout_index(data))
    weights = args.pretrained or str(save_openai_format(tiny_clip(seed=0), work / "tiny.pt"))
    model = ["--pretrained", weights, "--image_size", "224", "--patch_image_size", "224", "--target_image_size",
             "448", "--features_list", "2", "4", "--dpam", "3", "--depth", "3", "--n_ctx", "6", "--t_n_ctx", "2"]
    runtime = ["--device", args.device, "--batch_size", str(args.batch_size), "--num_workers", "0"]
    for n in args.processes:
        ckpt = work / f"ckpt{n}"
        seconds = run(n, "train.py", ["--train_data_path", str(data), "--save_path", str(ckpt), "--epoch",
                                      str(args.epochs), *model, *runtime])
        print(json.dumps({"command": "train.py", "processes": n, "epochs": args.epochs,
                          "images": 4 * args.images_per_class, "wall_s": round(seconds, 1)}))
        out = work / f"results{n}"
        seconds = run(n, "test.py", ["--data_path", str(data), "--save_path", str(out), "--checkpoint_path",
                                     str(ckpt), *model, *runtime])
        timing = json.loads((out / "results.json").read_text())["timing"]
        print(json.dumps({"command": "test.py", "processes": n, "images": timing["images"],
                          "wall_s": round(seconds, 1),
                          "inference_images_per_s": round(timing["images"] / timing["inference_s"], 2)}))


if __name__ == "__main__":
    main()
