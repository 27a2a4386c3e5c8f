"""Anomaly maps, scores and decisions for your own images; see README."""
from dhrclip.cli import predict_main

if __name__ == "__main__":
    predict_main()
