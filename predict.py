"""Anomaly maps, scores and decisions for your own images (see dhrclip/prediction.py)."""
from dhrclip.cli import run
from dhrclip.prediction import prediction_parser, predict

if __name__ == "__main__":
    run(predict, prediction_parser())
