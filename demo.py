"""Run the complete DHR-CLIP protocol on synthetic data; see README."""
from dhrclip.cli import demo_main

if __name__ == "__main__":
    demo_main()
