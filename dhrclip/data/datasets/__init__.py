"""The benchmark datasets of the zero-shot anomaly literature: how each lies on disk, and the
index (meta.json) built from it. One module per dataset holds its ``index`` function and, in its
docstring, the layouts it reads; ``DATASETS`` lists them in the order of the suite's table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ...errors import UserError
from . import (
    br35h,
    brainmri,
    btad,
    clinicdb,
    colondb,
    dagm,
    dtd_synthetic,
    endo,
    eyecandies,
    headct,
    isic,
    ksdd,
    ksdd2,
    kvasir,
    mpdd,
    mvtec,
    mvtec3d,
    mvtec_ad2,
    mvtec_loco,
    realiad,
    sdd,
    tn3k,
    visa,
)

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
    module: ModuleType  # holds ``index`` and, in its docstring, the layouts

    @property
    def layout(self) -> str:
        """The layouts this dataset's index reads, as written in its module."""
        return self.module.__doc__ or ""

    @property
    def index(self) -> Callable[[Path, list[str] | None], dict]:
        return self.module.index


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mvtec", "MVTec AD", "industrial", "pixel", "https://www.mvtec.com/company/research/datasets/mvtec-ad",
            "official", mvtec),
    Dataset("visa", "VisA", "industrial", "pixel", "https://github.com/amazon-science/spot-diff",
            "official, with split_csv/1cls.csv from its preparation script", visa),
    Dataset("mpdd", "MPDD", "industrial", "pixel", "https://github.com/stepanje/MPDD", "official", mpdd),
    Dataset("btad", "BTAD", "industrial", "pixel", "https://github.com/pankajmishra000/VT-ADL", "official", btad),
    Dataset("sdd", "SDD (KolektorSDD crops)", "industrial", "pixel", LITERATURE_LINKS,
            "the zero-shot literature's crops in MVTec AD layout", sdd),
    Dataset("ksdd", "KolektorSDD", "industrial", "pixel", "https://www.vicos.si/resources/kolektorsdd/",
            "official (pixel labels)", ksdd),
    Dataset("ksdd2", "KolektorSDD2", "industrial", "pixel", "https://www.vicos.si/resources/kolektorsdd2/",
            "official", ksdd2),
    Dataset("dagm", "DAGM 2007", "industrial", "pixel",
            "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection",
            "official (Class1-Class10)", dagm),
    Dataset("dtd_synthetic", "DTD-Synthetic", "industrial", "pixel", LITERATURE_LINKS, "MVTec AD layout",
            dtd_synthetic),
    Dataset("mvtec_ad2", "MVTec AD 2", "industrial", "pixel",
            "https://www.mvtec.com/company/research/datasets/mvtec-ad-2", "official (test_public)", mvtec_ad2),
    Dataset("mvtec_loco", "MVTec LOCO AD", "industrial", "pixel",
            "https://www.mvtec.com/company/research/datasets/mvtec-loco", "official", mvtec_loco),
    Dataset("mvtec3d", "MVTec 3D-AD (RGB)", "industrial", "pixel",
            "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad", "official", mvtec3d),
    Dataset("realiad", "Real-IAD", "industrial", "pixel", "https://github.com/Tencent/AnomalyDetection_Real-IAD",
            "official, with realiad_jsons/", realiad),
    Dataset("eyecandies", "Eyecandies", "industrial", "pixel", "https://eyecan-ai.github.io/eyecandies/",
            "official", eyecandies),
    Dataset("brainmri", "BrainMRI", "medical", "image",
            "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection", "Kaggle", brainmri),
    Dataset("headct", "HeadCT", "medical", "image", "https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
            "Kaggle, with labels.csv", headct),
    Dataset("br35h", "Br35H", "medical", "image", "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
            "Kaggle", br35h),
    Dataset("isic", "ISIC 2016", "medical", "pixel-only", "https://challenge.isic-archive.com/data/#2016",
            "official test set, or the literature's skin/test copy", isic),
    Dataset("clinicdb", "CVC-ClinicDB", "medical", "pixel-only", "https://polyp.grand-challenge.org/CVCClinicDB/",
            "official TIFF, or images/masks PNG copies", clinicdb),
    Dataset("colondb", "CVC-ColonDB", "medical", "pixel-only", LITERATURE_LINKS,
            "images/masks, as in the polyp benchmarks", colondb),
    Dataset("kvasir", "Kvasir-SEG", "medical", "pixel-only", "https://datasets.simula.no/kvasir-seg/",
            "official JPEG masks, or PNG copies", kvasir),
    Dataset("endo", "Endo (EndoTect 2020)", "medical", "pixel-only", LITERATURE_LINKS, "images/masks", endo),
    Dataset("tn3k", "TN3K", "medical", "pixel-only", "https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
            "official (test-image, test-mask)", tn3k),
)}


def dataset(name: str) -> Dataset:
    """The dataset called ``name``, or a UserError listing the known ones."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]
