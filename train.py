"""Train DHR-CLIP prompts on one dataset (all of its test split, with masks); see README."""
from dhrclip.cli import train_main

if __name__ == "__main__":
    train_main()
