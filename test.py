"""Test DHR-CLIP prompts zero-shot: per-class table, log.txt and results.json."""
from dhrclip.cli import run, evaluation_parser
from dhrclip.evaluation import evaluate

if __name__ == "__main__":
    run(evaluate, evaluation_parser())
