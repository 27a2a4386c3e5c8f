"""Export a trained detector to one ONNX file: python export.py --checkpoint_path CK --output model.onnx"""
from dhrclip.cli import export_main

if __name__ == "__main__":
    export_main()
