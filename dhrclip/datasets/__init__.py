"""The benchmark datasets of the zero-shot anomaly literature: how each lies on disk, and the
index (meta.json) built from it. One module per dataset holds its ``index`` function and, in its
docstring, the layouts it reads; ``DATASETS`` lists them in the order of the suite's table.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import UserError

DOMAINS = ("industrial", "medical")
LITERATURE_LINKS = "https://github.com/zqhang/AnomalyCLIP (the download links of its README)"


@dataclass(frozen=True)
class Dataset:
    """A dataset the generators and the suite know: ``name`` is its generator and its folder
    under the suite's data root; ``masks`` says what ground truth it has ("pixel": masks,
    "image": image labels only, "pixel-only": masks, every test image anomalous, so no image
    metrics); ``expects`` names the copy or layout that is read."""

    name: str
    title: str
    domain: str
    masks: str
    url: str
    expects: str

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.name}")

    @property
    def layout(self) -> str:
        """The layouts this dataset's index reads, as written in its module."""
        return self.module.__doc__ or ""

    @property
    def index(self) -> Callable[[Path, list[str] | None], dict]:
        return self.module.index


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mvtec", "MVTec AD", "industrial", "pixel", "https://www.mvtec.com/company/research/datasets/mvtec-ad",
            "official"),
    Dataset("visa", "VisA", "industrial", "pixel", "https://github.com/amazon-science/spot-diff",
            "official, with split_csv/1cls.csv from its preparation script"),
    Dataset("mpdd", "MPDD", "industrial", "pixel", "https://github.com/stepanje/MPDD", "official"),
    Dataset("btad", "BTAD", "industrial", "pixel", "https://github.com/pankajmishra000/VT-ADL", "official"),
    Dataset("sdd", "SDD (KolektorSDD crops)", "industrial", "pixel", LITERATURE_LINKS,
            "the zero-shot literature's crops in MVTec AD layout"),
    Dataset("ksdd", "KolektorSDD", "industrial", "pixel", "https://www.vicos.si/resources/kolektorsdd/",
            "official (pixel labels)"),
    Dataset("ksdd2", "KolektorSDD2", "industrial", "pixel", "https://www.vicos.si/resources/kolektorsdd2/",
            "official"),
    Dataset("dagm", "DAGM 2007", "industrial", "pixel",
            "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection",
            "official (Class1-Class10)"),
    Dataset("dtd_synthetic", "DTD-Synthetic", "industrial", "pixel", LITERATURE_LINKS, "MVTec AD layout"),
    Dataset("mvtec_ad2", "MVTec AD 2", "industrial", "pixel",
            "https://www.mvtec.com/company/research/datasets/mvtec-ad-2", "official (test_public)"),
    Dataset("mvtec_loco", "MVTec LOCO AD", "industrial", "pixel",
            "https://www.mvtec.com/company/research/datasets/mvtec-loco", "official"),
    Dataset("mvtec3d", "MVTec 3D-AD (RGB)", "industrial", "pixel",
            "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad", "official"),
    Dataset("realiad", "Real-IAD", "industrial", "pixel", "https://github.com/Tencent/AnomalyDetection_Real-IAD",
            "official, with realiad_jsons/"),
    Dataset("eyecandies", "Eyecandies", "industrial", "pixel", "https://eyecan-ai.github.io/eyecandies/",
            "official"),
    Dataset("brainmri", "BrainMRI", "medical", "image",
            "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection", "Kaggle"),
    Dataset("headct", "HeadCT", "medical", "image", "https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
            "Kaggle, with labels.csv"),
    Dataset("br35h", "Br35H", "medical", "image", "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
            "Kaggle"),
    Dataset("isic", "ISIC 2016", "medical", "pixel-only", "https://challenge.isic-archive.com/data/#2016",
            "official test set, or the literature's skin/test copy"),
    Dataset("clinicdb", "CVC-ClinicDB", "medical", "pixel-only", "https://polyp.grand-challenge.org/CVCClinicDB/",
            "official TIFF, or images/masks PNG copies"),
    Dataset("colondb", "CVC-ColonDB", "medical", "pixel-only", LITERATURE_LINKS,
            "images/masks, as in the polyp benchmarks"),
    Dataset("kvasir", "Kvasir-SEG", "medical", "pixel-only", "https://datasets.simula.no/kvasir-seg/",
            "official JPEG masks, or PNG copies"),
    Dataset("endo", "Endo (EndoTect 2020)", "medical", "pixel-only", LITERATURE_LINKS, "images/masks"),
    Dataset("tn3k", "TN3K", "medical", "pixel-only", "https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
            "official (test-image, test-mask)"),
)}


def dataset(name: str) -> Dataset:
    """The dataset called ``name``, or a UserError listing the known ones."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]
