"""Run the complete DHR-CLIP protocol on synthetic data (see dhrclip/demo.py)."""
from dhrclip.cli import run
from dhrclip.demo import demo_parser, run_demo

if __name__ == "__main__":
    run(run_demo, demo_parser())
