"""Each benchmark dataset's index, on a tiny replica of its real layout with the layout's traps:
JPEG masks, several masks per image, labels in JSON, CSV or YAML, empty masks meaning normal,
unlabelled and duplicate folders to leave out."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT
from layouts import BOX, image, mask, painted

from dhrclip.core.grid import FixedGrid
from dhrclip.data.canvases import CanvasDataset, Masks, resize_mask
from dhrclip.data.datasets import DATASETS
from dhrclip.data.images import load_mask
from dhrclip.data.indexing import write_meta
from dhrclip.data.meta import read_meta
from dhrclip.errors import UserError


def counts(meta: dict) -> dict:
    """(split, class) -> (normal images, anomalous images, mask files)."""
    out = {}
    for split in ("train", "test"):
        for cls, rows in meta[split].items():
            files = sum(len(r["mask_path"]) if isinstance(r["mask_path"], list) else bool(r["mask_path"])
                        for r in rows)
            out[(split, cls)] = (sum(not r["anomaly"] for r in rows), sum(r["anomaly"] for r in rows), files)
    return out


def indexed(name: str, root: Path) -> dict:
    """The dataset's index, written and read back as test.py reads it."""
    meta = DATASETS[name].index(root, None)
    write_meta(root, meta)
    read_meta(root, "test")
    return meta


def test_every_dataset_has_a_generator_and_a_documented_layout():
    readme = (ROOT / "README.md").read_text().splitlines()
    for name, spec in DATASETS.items():
        row = next((line for line in readme if f"`generate_dataset_json/{name}.py --root data/{name}`" in line), "")
        assert spec.url.split()[0] in row and spec.domain in row and spec.expects in row, \
            f"the README's dataset table lacks {name}, or says otherwise than DATASETS"
        assert (ROOT / "generate_dataset_json" / f"{name}.py").is_file(), name
        assert spec.domain in ("industrial", "medical") and spec.masks in ("pixel", "image", "pixel-only"), name
        assert "/" in spec.layout and len(spec.layout) > 150, name  # a drawn layout, not a one-liner


def test_mvtec_ad2_reads_test_public_and_leaves_out_private_and_validation(tmp_path):
    cls = tmp_path / "vial"
    for i in range(2):
        image(cls / "train" / "good" / f"{i:03d}_regular.png")
        image(cls / "test_public" / "good" / f"{i:03d}_regular.png")
        image(cls / "test_public" / "bad" / f"{i:03d}_regular.png")  # the same stems as good/
        mask(cls / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png")
    image(cls / "validation" / "good" / "000_regular.png")
    for i in range(3):
        image(cls / "test_private" / f"{i:03d}_regular.png")
    image(cls / "test_private_mixed" / "000_mixed.png")
    meta = indexed("mvtec_ad2", tmp_path)
    assert counts(meta) == {("train", "vial"): (2, 0, 0), ("test", "vial"): (2, 2, 2)}
    assert all("private" not in r["img_path"] for r in meta["test"]["vial"])
    assert meta["info"]["skipped"] == {"test_private/ images (unlabelled)": 3,
                                       "test_private_mixed/ images (unlabelled)": 1, "validation/ images": 1}


def test_mvtec_loco_reads_a_folder_of_masks_per_image_as_their_union(tmp_path):
    cls = tmp_path / "pushpins"
    for split, label in (("train", "good"), ("train", "good2"), ("validation", "good"), ("test", "good")):
        image(cls / split / label.removesuffix("2") / f"00{len(label)}.png")
    image(cls / "test" / "logical_anomalies" / "000.png")
    mask(cls / "ground_truth" / "logical_anomalies" / "000" / "000.png", (slice(0, 5), slice(0, 5)), value=17)
    mask(cls / "ground_truth" / "logical_anomalies" / "000" / "001.png", (slice(30, 40), slice(40, 48)), value=242)
    image(cls / "test" / "structural_anomalies" / "000.png")
    mask(cls / "ground_truth" / "structural_anomalies" / "000" / "000.png", value=89)
    meta = indexed("mvtec_loco", tmp_path)
    assert counts(meta) == {("train", "pushpins"): (2, 0, 0), ("test", "pushpins"): (1, 2, 3)}
    logical = next(i for i in read_meta(tmp_path, "test")["pushpins"] if i.specie_name == "logical_anomalies")
    union = load_mask(logical.masks, logical.mask_threshold)
    assert union.sum() == 25 + 80 and union[0, 0] and union[39, 47]
    assert torch.equal(CanvasDataset([logical], FixedGrid(32, 32, 1), masks=Masks.SCORED)[0]["mask"],
                       resize_mask(union, 32))


def test_realiad_takes_labels_and_paths_from_its_json(tmp_path):
    base = tmp_path / "realiad_1024" / "audiojack"
    ok = [image(base / "OK" / f"S000{i}" / f"audiojack_000{i}_OK_C1_20231023.jpg") for i in range(3)]
    ng = image(base / "NG" / "BX" / "S0004" / "audiojack__0004_NG_BX_C1_20231023.jpg")  # a double underscore
    ng_mask = mask(base / "NG" / "BX" / "S0004" / "audiojack__0004_NG_BX_C1_20231023.png")
    hidden = image(base / "NG" / "BX" / "S0004" / "audiojack__0004_NG_BX_C2_20231023.jpg")  # defect not in view
    rel = lambda p: p.relative_to(base).as_posix()  # noqa: E731
    sample = lambda p, cls, m=None: {"category": "audiojack", "anomaly_class": cls, "image_path": rel(p),  # noqa: E731
                                     "mask_path": rel(m) if m else None}
    (tmp_path / "realiad_jsons" / "realiad_jsons").mkdir(parents=True)
    (tmp_path / "realiad_jsons" / "realiad_jsons" / "audiojack.json").write_text(json.dumps({
        "meta": {"prefix": "", "normal_class": "OK"},
        "train": [sample(ok[0], "OK"), sample(ok[1], "OK")],
        "test": [sample(ok[2], "OK"), sample(ng, "BX", ng_mask), sample(hidden, "BX"),
                 sample(base / "NG" / "gone.jpg", "BX")]}))
    meta = indexed("realiad", tmp_path)
    assert counts(meta) == {("train", "audiojack"): (2, 0, 0), ("test", "audiojack"): (2, 1, 1)}
    assert meta["info"]["skipped"] == {"test images named in the JSON but not on disk": 1}


def test_ksdd2_labels_by_whether_the_mask_is_empty(tmp_path):
    for split, normal, defective in (("train", 3, 1), ("test", 2, 2)):
        for i in range(normal + defective):
            image(tmp_path / split / f"{i + 10000}.png")
            mask(tmp_path / split / f"{i + 10000}_GT.png", BOX if i >= normal else None)
    meta = indexed("ksdd2", tmp_path)
    assert counts(meta) == {("train", "ksdd2"): (3, 0, 0), ("test", "ksdd2"): (2, 2, 2)}
    assert meta["info"]["skipped"] == {"defective images of train/ (the train split holds normal images)": 1}


def test_ksdd_labels_by_whether_the_mask_is_empty(tmp_path):
    for folder, parts in (("kos01", (True, False, False)), ("kos02", (False,))):
        for i, defective in enumerate(parts):
            image(tmp_path / folder / f"Part{i}.jpg")
            mask(tmp_path / folder / f"Part{i}_label.bmp", BOX if defective else None)
    meta = indexed("ksdd", tmp_path)
    assert counts(meta) == {("test", "electrical_commutators"): (3, 1, 1)}


def test_sdd_crops_in_mvtec_layout_with_a_space_in_the_class(tmp_path):
    cls = tmp_path / "electrical commutators"
    image(cls / "train" / "good" / "0.png")
    for i in range(2):
        image(cls / "test" / "good" / f"g{i}.png")
        image(cls / "test" / "defect" / f"{i}.png")
        mask(cls / "ground_truth" / "defect" / f"{i}_mask.png")
    meta = indexed("sdd", tmp_path)
    assert counts(meta) == {("train", "electrical commutators"): (1, 0, 0),
                            ("test", "electrical commutators"): (2, 2, 2)}


def test_dagm_labels_by_label_files_and_reads_nested_copies(tmp_path):
    for cls, folder in (("Class1", tmp_path / "Class1"), ("Class2", tmp_path / "Class2" / "Class2")):
        for phase, defective in (("Train", {"0002"}), ("Test", {"0004", "0005"})):
            for stem in ("0001", "0002", "0003") if phase == "Train" else ("0004", "0005", "0006"):
                image(folder / phase / f"{stem}.PNG")
                if stem in defective:
                    mask(folder / phase / "Label" / f"{stem}_label.PNG")
            (folder / phase / "Label" / "Labels.txt").write_text("\ufeffNo.\n1\t1\t0002.PNG\t0\t0002_label.PNG\n")
    meta = indexed("dagm", tmp_path)
    for cls in ("Class1", "Class2"):
        assert counts(meta)[("train", cls)] == (2, 0, 0) and counts(meta)[("test", cls)] == (1, 2, 2)
    assert sum(meta["info"]["skipped"].values()) == 2


def test_dtd_synthetic(tmp_path):
    cls = tmp_path / "Woven_001"
    image(cls / "train" / "good" / "000.png")
    image(cls / "test" / "good" / "000.png")
    for i in range(2):
        image(cls / "test" / "bad" / f"{i:03d}.png")
        mask(cls / "ground_truth" / "bad" / f"{i:03d}_mask.png")
    assert counts(indexed("dtd_synthetic", tmp_path)) == {("train", "Woven_001"): (1, 0, 0),
                                                           ("test", "Woven_001"): (1, 2, 2)}


def test_mvtec3d_indexes_rgb_only(tmp_path):
    cls = tmp_path / "bagel"
    for i in range(2):
        image(cls / "train" / "good" / "rgb" / f"{i:03d}.png")
        (cls / "train" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
        (cls / "train" / "good" / "xyz" / f"{i:03d}.tiff").write_bytes(b"II*\0")
        image(cls / "test" / "crack" / "rgb" / f"{i:03d}.png")
        mask(cls / "test" / "crack" / "gt" / f"{i:03d}.png")
    image(cls / "validation" / "good" / "rgb" / "000.png")
    image(cls / "test" / "good" / "rgb" / "000.png")
    mask(cls / "test" / "good" / "gt" / "000.png", None)
    (cls / "calibration").mkdir()
    (cls / "calibration" / "camera_parameters.json").write_text("{}")
    meta = indexed("mvtec3d", tmp_path)
    assert counts(meta) == {("train", "bagel"): (2, 0, 0), ("test", "bagel"): (1, 2, 2)}
    assert meta["info"]["skipped"] == {"validation/ images": 1, "xyz/ point clouds": 2}


def test_eyecandies_labels_from_metadata_one_lighting(tmp_path):
    cls = tmp_path / "CandyCane"

    def sample(phase: str, name: str, anomalous: int | None) -> None:
        for k in (0, 5):
            image(cls / phase / "data" / f"{name}_image_{k}.png")
        mask(cls / phase / "data" / f"{name}_mask.png", BOX if anomalous else None)
        if anomalous is not None:
            (cls / phase / "data" / f"{name}_metadata.yaml").write_text(f"anomalous: {anomalous}\nbumps: 0\n")

    sample("train", "000", 0)
    sample("train", "001", None)  # train samples may come without metadata: normal by construction
    for i, label in enumerate((0, 0, 1, 1)):
        sample("test_public", f"{i:02d}", label)
    sample("val", "00", 0)
    sample("test_private", "00", None)
    meta = indexed("eyecandies", tmp_path)
    assert counts(meta) == {("train", "CandyCane"): (2, 0, 0), ("test", "CandyCane"): (2, 2, 2)}
    assert all(r["img_path"].endswith("_image_5.png") for r in meta["test"]["CandyCane"])
    assert meta["info"]["skipped"] == {"test_private/ samples (unlabelled)": 1, "val/ samples": 1}


def test_brainmri_leaves_out_the_duplicate_folders(tmp_path):
    for top in (tmp_path / "brain_tumor_dataset", tmp_path):
        image(top / "yes" / "Y1.jpg")
        image(top / "yes" / "Y2.JPG")
        image(top / "no" / "1 no.jpeg")
        image(top / "no" / "2 no.jpg")
    meta = indexed("brainmri", tmp_path)
    assert counts(meta) == {("test", "brain"): (2, 2, 0)}
    assert all(r["img_path"].startswith("brain_tumor_dataset/") for r in meta["test"]["brain"])
    assert sum(meta["info"]["skipped"].values()) == 4


def test_headct_labels_from_its_csv(tmp_path):
    for i in range(5):
        image(tmp_path / "head_ct" / "head_ct" / f"{i:03d}.png")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n7,1\n")
    meta = indexed("headct", tmp_path)
    assert counts(meta) == {("test", "brain"): (2, 2, 0)}
    assert meta["info"]["skipped"] == {"ids of labels.csv without a scan": 1, "scans without a label in labels.csv": 1}


def test_br35h_leaves_out_unlabelled_folders(tmp_path):
    for i in range(2):
        image(tmp_path / "yes" / f"y{i}.jpg")
        image(tmp_path / "pred" / f"pred{i}.jpg")
    for i in range(3):
        image(tmp_path / "no" / f"no{i}.jpg")
    meta = indexed("br35h", tmp_path)
    assert counts(meta) == {("test", "brain"): (3, 2, 0)}
    assert meta["info"]["skipped"] == {"unlabelled or other-task images in pred/": 2}


@pytest.mark.parametrize("layout", ["official", "copy"])
def test_isic_pairs_masks_by_name_in_both_layouts(tmp_path, layout):
    images = tmp_path / ("ISBI2016_ISIC_Part1_Test_Data" if layout == "official" else "skin/test/anomaly")
    truth = tmp_path / ("" if layout == "official" else "skin") / "ISBI2016_ISIC_Part1_Test_GroundTruth"
    for stem in ("ISIC_0000003", "ISIC_0000012", "ISIC_0000100"):
        image(images / f"{stem}.jpg")
    for stem in ("ISIC_0000003", "ISIC_0000012", "ISIC_0000099"):  # 0000099: no image; 0000100: no mask
        mask(truth / f"{stem}_Segmentation.png")
    meta = indexed("isic", tmp_path)
    assert counts(meta) == {("test", "skin"): (0, 2, 2)}
    assert all(Path(r["mask_path"]).name == Path(r["img_path"]).stem + "_Segmentation.png"
               for r in meta["test"]["skin"])
    assert sum(meta["info"]["skipped"].values()) == 2


@pytest.mark.parametrize("layout", [("Original", "Ground Truth", ".tif"), ("PNG/Original", "PNG/Ground Truth", ".png"),
                                    ("images", "masks", ".png")])
def test_clinicdb_reads_the_official_tiffs_and_png_copies(tmp_path, layout):
    images, masks, suffix = layout
    for stem in ("1", "2", "10"):
        image(tmp_path / images / f"{stem}{suffix}")
        mask(tmp_path / masks / f"{stem}{suffix}", channels=3)
    meta = indexed("clinicdb", tmp_path)
    assert counts(meta) == {("test", "colon"): (0, 3, 3)}
    item = read_meta(tmp_path)["colon"][0]
    assert np.array_equal(load_mask(item.masks, item.mask_threshold), painted())


def test_colondb_nested_copy(tmp_path):
    folder = tmp_path / "TestDataset" / "CVC-ColonDB"
    for stem in ("1", "2"):
        image(folder / "images" / f"{stem}.png")
        mask(folder / "masks" / f"{stem}.png")
    assert counts(indexed("colondb", tmp_path)) == {("test", "colon"): (0, 2, 2)}


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_kvasir_masks_binarise_to_the_painted_region(tmp_path, suffix):
    folder = tmp_path / "Kvasir-SEG" / "Kvasir-SEG"  # as Kaggle nests it
    for stem in ("cju0qkwl35piu0993l0dewei2", "cju0roawvklrq0799vmjorwfv"):
        image(folder / "images" / f"{stem}.jpg")
        noisy = mask(tmp_path / "jpeg" / f"{stem}.jpg")
        target = folder / "masks" / f"{stem}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.imread(str(noisy), cv2.IMREAD_GRAYSCALE))  # a PNG copy keeps the noise
    meta = indexed("kvasir", tmp_path)
    assert counts(meta) == {("test", "colon"): (0, 2, 2)}
    item = read_meta(tmp_path)["colon"][0]
    assert load_mask(item.masks).sum() > painted().sum()  # the noise is there: above 0 would count it
    assert np.array_equal(load_mask(item.masks, item.mask_threshold), painted())
    sample = CanvasDataset([item], FixedGrid(32, 32, 1), masks=Masks.SCORED)[0]  # what test.py scores against
    assert torch.equal(sample["mask"], resize_mask(painted(), 32))


def test_endo(tmp_path):
    folder = tmp_path / "EndoTect_2020_Segmentation_Test_Dataset"
    for stem in ("a", "b", "c"):
        image(folder / "images" / f"{stem}.jpg")
    for stem in ("a", "b"):
        mask(folder / "masks" / f"{stem}.png")
    meta = indexed("endo", tmp_path)
    assert counts(meta) == {("test", "colon"): (0, 2, 2)}
    assert meta["info"]["skipped"] == {"images in EndoTect_2020_Segmentation_Test_Dataset/images without a mask": 1}


def test_tn3k_jpeg_masks_and_trainval_left_out(tmp_path):
    folder = tmp_path / "Thyroid Dataset" / "tn3k"
    for stem in ("0000", "0001"):
        image(folder / "test-image" / f"{stem}.jpg")
        mask(folder / "test-mask" / f"{stem}.jpg")
        image(folder / "trainval-image" / f"{stem}.jpg")
        mask(folder / "trainval-mask" / f"{stem}.jpg")
    meta = indexed("tn3k", tmp_path)
    assert counts(meta) == {("test", "thyroid"): (0, 2, 2)}
    assert all(r["mask_threshold"] == 127 for r in meta["test"]["thyroid"])
    item = read_meta(tmp_path)["thyroid"][1]
    assert np.array_equal(load_mask(item.masks, item.mask_threshold), painted())
    assert meta["info"]["skipped"] == {"trainval-image/ (training images, all with nodules)": 2}


def test_classes_filter_and_unknown_class(tmp_path):
    for cls in ("can", "vial"):
        image(tmp_path / cls / "test_public" / "good" / "000_regular.png")
    assert list(DATASETS["mvtec_ad2"].index(tmp_path, ["vial"])["test"]) == ["vial"]
    with pytest.raises(UserError, match=r"classes \['rice'\] not found"):
        DATASETS["mvtec_ad2"].index(tmp_path, ["rice"])


def test_a_layout_that_is_not_there_is_a_clear_error(tmp_path):
    image(tmp_path / "somewhere" / "x.png")
    with pytest.raises(UserError, match="expected images/ with masks/"):
        DATASETS["kvasir"].index(tmp_path, None)
    with pytest.raises(UserError, match="no test-image/ and test-mask/"):
        DATASETS["tn3k"].index(tmp_path, None)


def test_old_meta_json_still_loads_and_mask_fields_are_checked(tmp_path):
    image(tmp_path / "a.png")
    mask(tmp_path / "a_mask.png")
    row = {"img_path": "a.png", "mask_path": "a_mask.png", "cls_name": "c", "specie_name": "d", "anomaly": 1}
    (tmp_path / "meta.json").write_text(json.dumps({"train": {}, "test": {"c": [row]}}))
    item = read_meta(tmp_path)["c"][0]
    assert item.masks == (tmp_path / "a_mask.png",) and item.mask_threshold == 0
    for bad, message in (({"mask_path": 3}, "'mask_path' must be"), ({"mask_threshold": -1}, "'mask_threshold'")):
        (tmp_path / "meta.json").write_text(json.dumps({"train": {}, "test": {"c": [{**row, **bad}]}}))
        with pytest.raises(UserError, match=message):
            read_meta(tmp_path)


def test_generator_script_prints_the_layout_and_writes_meta(tmp_path):
    help_text = subprocess.run([sys.executable, "generate_dataset_json/tn3k.py", "--help"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout
    assert "test-mask/0000.jpg" in help_text and "--root" in help_text
    for stem in ("0000", "0001"):
        image(tmp_path / "test-image" / f"{stem}.jpg")
        mask(tmp_path / "test-mask" / f"{stem}.jpg")
    proc = subprocess.run([sys.executable, "generate_dataset_json/tn3k.py", "--root", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Counter(r["anomaly"] for r in json.loads((tmp_path / "meta.json").read_text())["test"]["thyroid"]) == {1: 2}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_missing_root_is_a_clear_error(tmp_path, name):
    with pytest.raises(UserError, match="not found"):
        DATASETS[name].index(tmp_path / "nowhere", None)


def test_hidden_files_are_not_images(tmp_path):
    for i, defective in enumerate((False, True)):
        image(tmp_path / "test" / f"{i}.png")
        mask(tmp_path / "test" / f"{i}_GT.png", BOX if defective else None)
    (tmp_path / "test" / "._0_GT.png").write_bytes(b"\0\5\x16\7 resource fork")  # macOS AppleDouble files
    (tmp_path / "test" / "._1.png").write_bytes(b"\0\5\x16\7 resource fork")
    assert counts(indexed("ksdd2", tmp_path)) == {("test", "ksdd2"): (1, 1, 1)}


def test_a_bilevel_mask_keeps_its_region_under_a_threshold(tmp_path):
    from PIL import Image
    Image.fromarray(painted()).convert("1").save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png", 127), painted())


def test_a_bundle_of_datasets_is_read_by_name_and_an_ambiguous_one_refused(tmp_path):
    bundle = tmp_path / "TestDataset"
    for name, count in (("CVC-300", 1), ("CVC-ColonDB", 2), ("Kvasir", 3)):
        for i in range(count):
            image(bundle / name / "images" / f"{i}.png")
            mask(bundle / name / "masks" / f"{i}.png")
    colondb = DATASETS["colondb"].index(tmp_path, None)
    assert counts(colondb) == {("test", "colon"): (0, 2, 2)}
    assert sum(colondb["info"]["skipped"].values()) == 1 + 3  # the bundle's other datasets
    assert counts(DATASETS["kvasir"].index(tmp_path, None)) == {("test", "colon"): (0, 3, 3)}
    with pytest.raises(UserError, match="several folders with images/ and masks/: TestDataset/CVC-300, "):
        DATASETS["endo"].index(tmp_path, None)


def test_clinicdb_kaggle_copy_reads_png_and_counts_the_tif_copy(tmp_path):
    for fmt, suffix in (("PNG", ".png"), ("TIF", ".tif")):
        for stem in ("1", "2"):
            image(tmp_path / fmt / "Original" / f"{stem}{suffix}")
            mask(tmp_path / fmt / "Ground Truth" / f"{stem}{suffix}")
    meta = DATASETS["clinicdb"].index(tmp_path, None)
    assert counts(meta) == {("test", "colon"): (0, 2, 2)}
    assert all(r["img_path"].startswith("PNG/") for r in meta["test"]["colon"])
    assert meta["info"]["skipped"] == {"images of another copy or dataset in TIF/": 2}


def test_isic_copy_keeps_its_good_folder_as_normal(tmp_path):
    image(tmp_path / "skin" / "test" / "good" / "ISIC_0000001.jpg")
    image(tmp_path / "skin" / "test" / "anomaly" / "ISIC_0000003.jpg")
    mask(tmp_path / "skin" / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000003_Segmentation.png")
    assert counts(indexed("isic", tmp_path)) == {("test", "skin"): (1, 1, 1)}


def test_mvtec_layout_details_case_jpeg_masks_globs_and_counts(tmp_path):
    cls = tmp_path / "bottle"
    image(cls / "test" / "Good" / "000.png")  # any case of good/ok is normal
    image(cls / "test" / "broken" / "img[1].png")  # glob characters in a name
    mask(cls / "ground_truth" / "broken" / "img[1]_mask.jpg")  # a re-encoded JPEG mask
    meta = DATASETS["mvtec"].index(tmp_path, ["bottle"])
    assert counts(meta) == {("test", "bottle"): (1, 1, 1)} and meta["info"]["classes"] == ["bottle"]
    item = next(r for r in meta["test"]["bottle"] if r["anomaly"])
    assert item["mask_threshold"] == 127
    write_meta(tmp_path, meta)
    anomalous = next(i for i in read_meta(tmp_path)["bottle"] if i.anomaly)
    assert np.array_equal(load_mask(anomalous.masks, anomalous.mask_threshold), painted())


def test_an_empty_index_says_what_was_left_out(tmp_path):
    for stem in ("a", "b"):
        image(tmp_path / "images" / f"{stem}.png")
        mask(tmp_path / "masks" / f"{stem}_mask.png")  # named otherwise than their images
        mask(tmp_path / "masks" / f"{stem}_mask.jpg")  # and twice
    with pytest.raises(UserError, match=r"no kvasir test images; left out: 2 images in images without a mask, "
                                        r"2 masks in masks sharing a name"):
        DATASETS["kvasir"].index(tmp_path, None)


def test_label_files_are_read_strictly(tmp_path):
    for i in range(2):
        image(tmp_path / "head_ct" / "head_ct" / f"{i:03d}.png")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,2\n")
    with pytest.raises(UserError, match="hemorrhage must be 0 or 1"):
        DATASETS["headct"].index(tmp_path, None)
    (tmp_path / "labels.csv").write_bytes(b"id, hemorrhage\n0,\xff\n")
    with pytest.raises(UserError, match="not a readable CSV"):
        DATASETS["headct"].index(tmp_path, None)
    visa = tmp_path / "visa"
    image(visa / "candle" / "0.JPG")
    (visa / "split_csv").mkdir(parents=True)
    table = "object,split,label,image,mask\ncandle,test,Normal,candle/0.JPG,\n"
    (visa / "split_csv" / "1cls.csv").write_text("\ufeff" + table)  # as a spreadsheet program saves it
    assert counts(DATASETS["visa"].index(visa, None)) == {("test", "candle"): (1, 0, 0)}
    (visa / "split_csv" / "1cls.csv").write_text(table.replace("Normal", "broken"))
    with pytest.raises(UserError, match="label must be normal or anomaly"):
        DATASETS["visa"].index(visa, None)


def test_folder_layout_ignores_hidden_folders(tmp_path):
    from dhrclip.data.indexing import folder_index
    image(tmp_path / "good" / "a.png")
    image(tmp_path / "scratch" / "b.png")
    image(tmp_path / ".ipynb_checkpoints" / "c.png")
    assert counts(folder_index(tmp_path, "part")) == {("test", "part"): (1, 1, 0)}
