"""Test DHR-CLIP prompts zero-shot: per-class table, log.txt and results.json; see README."""
from dhrclip.cli import test_main

if __name__ == "__main__":
    test_main()
