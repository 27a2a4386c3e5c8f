"""run_DHRCLIP.sh calls train.py and test.py with flags their parsers accept, in the paper's order."""
import json
import os
import subprocess
import sys

from conftest import ROOT

STANDIN = """#!{python}
import json, sys
from dhrclip.cli import evaluation_parser, train_parser
script, argv = sys.argv[1], sys.argv[2:]
name = script.rsplit("/", 1)[-1]
if name == "train.py":
    args = vars(train_parser().parse_args(argv))
elif name == "test.py":
    args = vars(evaluation_parser().parse_args(argv))
else:
    args = {{"argv": argv}}
with open({log!r}, "a") as f:
    f.write(json.dumps({{"script": name, "args": {{k: str(v) for k, v in args.items()}}}}) + "\\n")
"""


def test_protocol_script_runs_train_and_test_with_valid_flags(tmp_path):
    log = tmp_path / "calls.jsonl"
    standin = tmp_path / "python"
    standin.write_text(STANDIN.format(python=sys.executable, log=str(log)))
    standin.chmod(0o755)
    env = {**os.environ, "PYTHON": str(standin), "OUT": str(tmp_path / "runs"), "WEIGHTS": "/w/ViT-L-14-336px.pt"}
    subprocess.run(["bash", str(ROOT / "run_DHRCLIP.sh"), str(tmp_path / "mvtec"), str(tmp_path / "visa")],
                   env=env, check=True)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["script"] for c in calls] == ["mvtec.py", "visa.py", "train.py", "test.py", "train.py", "test.py"]
    train_mvtec, test_visa, train_visa, test_mvtec = calls[2:]
    assert train_mvtec["args"]["train_data_path"].endswith("mvtec") and test_visa["args"]["data_path"].endswith("visa")
    assert test_visa["args"]["target_image_size"] == "1024" and test_visa["args"]["patch_image_size"] == "518"
    assert test_mvtec["args"]["target_image_size"] == "672" and test_mvtec["args"]["patch_image_size"] == "336"
    assert train_visa["args"]["target_image_size"] == "448" and train_visa["args"]["epoch"] == "15"
    assert train_mvtec["args"]["features_list"] == train_visa["args"]["features_list"] == "[24]"
    assert test_visa["args"]["features_list"] == test_mvtec["args"]["features_list"] == "None"  # the checkpoint's
    assert all(c["args"]["pretrained"] == "/w/ViT-L-14-336px.pt" for c in calls[2:])
