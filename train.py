"""Train DHR-CLIP prompts on one dataset (all of its test split, with masks)."""
from dhrclip.cli import run, train_parser
from dhrclip.training import train

if __name__ == "__main__":
    run(train, train_parser())
