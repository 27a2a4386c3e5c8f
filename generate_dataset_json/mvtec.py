"""Write ROOT/meta.json for MVTec AD (layout: cls/{train,test}/{defect}/img, cls/ground_truth/{defect}/mask)."""
from _common import mvtec_style_main

from dhrclip.indexing import MVTEC_CLASSES

if __name__ == "__main__":
    mvtec_style_main(__doc__, MVTEC_CLASSES)
