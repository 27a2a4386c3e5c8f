"""Figures: one colour scale per run or class, the aspect ratio kept."""
import cv2
import numpy as np
import pytest
from conftest import RUNTIME, run_script
from PIL import Image

from dhrclip import cli
from dhrclip.data.synthetic import synthetic_image
from dhrclip.engine.figures import DISPLAY_MAX, DISPLAY_MIN, ColorScale, jet, outline, prediction_figure


def test_figures_share_one_colour_scale_with_the_threshold_in_the_middle():
    scale = ColorScale.around(0.2, 1.0, threshold=0.8)
    assert (scale.low, scale.high) == pytest.approx((0.2, 1.4)) and scale(np.array([0.8]))[0] == pytest.approx(0.5)
    assert ColorScale.around(0.2, 1.0)(np.array([0.2, 1.0])).tolist() == [0.0, 1.0]
    calm = np.full((20, 20), 0.3, np.float32)
    image = np.zeros((20, 20, 3), np.uint8)
    small = prediction_figure(image, calm, scale, "a.png", 0.1, "normal", 0.8)
    assert small.shape[0] >= DISPLAY_MIN and small.shape[1] >= 3 * DISPLAY_MIN  # upscaled for display
    heat = small[small.shape[0] // 2, DISPLAY_MIN + DISPLAY_MIN // 2]  # middle of the heatmap panel
    assert heat[2] > heat[0]  # a calm map stays blue: its value is below the threshold in the middle
    big = prediction_figure(np.zeros((3000, 4000, 3), np.uint8), np.zeros((3000, 4000), np.float32), scale,
                            "b.png", 0.9, "anomalous", 0.8)
    assert big.shape[1] <= 3 * DISPLAY_MAX + 100 and big.shape[0] <= DISPLAY_MAX


def test_all_figures_of_a_run_share_one_colour_bar_unless_asked_per_image(tmp_path, checkpoint):
    rng = np.random.default_rng(4)
    (tmp_path / "in").mkdir()
    calm = synthetic_image("grain", 48, 48, rng)
    Image.fromarray(calm).save(tmp_path / "in" / "calm.png")
    defect = calm.copy()
    defect[10:30, 10:30] = (220, 30, 30)
    Image.fromarray(defect).save(tmp_path / "in" / "defect.png")
    bars = {}
    for mode in ("run", "image"):
        proc = run_script("predict.py", "--checkpoint_path", str(checkpoint), "--input", str(tmp_path / "in"),
                          "--save_path", str(tmp_path / mode), "--figure_scale", mode, *RUNTIME)
        assert proc.returncode == 0, proc.stderr[-2000:]
        figures = [cv2.imread(str(tmp_path / mode / "figures" / f"{n}_png.png")) for n in ("calm", "defect")]
        bars[mode] = [f[:, -60:] for f in figures]  # the labelled colour bar on the right
    assert np.array_equal(*bars["run"]) and not np.array_equal(*bars["image"])


def test_vis_figures_keep_the_aspect_ratio(tmp_path, checkpoint, target_data):
    cli.test_main(["--data_path", str(target_data), "--checkpoint_path", str(checkpoint), "--save_path",
                   str(tmp_path / "res"), "--vis", "--classes", "ring", *RUNTIME])
    figure = cv2.imread(str(next((tmp_path / "res" / "vis" / "ring").glob("*.png"))))
    # 64x80 images shown at 256x320: three panels of 320 and a colour bar; two title rows above.
    assert figure.shape[:2] == (256 + 24 + 28, 3 * 320 + 72)


def test_vis_names_made_from_the_index_never_leave_the_output_folder(tmp_path, checkpoint, target_data):
    """A class named by an absolute path and defect types with ``..`` draw their figures inside
    save_path/vis, and two names that clean up alike stay apart."""
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(target_data, data)
    meta = json.loads((data / "meta.json").read_text())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "important.png").write_bytes(b"precious")
    items = meta["test"].pop("ring")
    for k, item in enumerate(items):
        item["specie_name"] = "../../../elsewhere/important" if k % 2 else "..\\..\\elsewhere"
    meta["test"][str(outside)] = items
    (data / "meta.json").write_text(json.dumps(meta))
    cli.test_main(["--data_path", str(data), "--checkpoint_path", str(checkpoint), "--save_path",
                   str(tmp_path / "out"), "--vis", "--metrics", "image-level", *RUNTIME])
    assert (outside / "important.png").read_bytes() == b"precious" and sorted(outside.iterdir()) == [
        outside / "important.png"]
    drawn = [p for p in (tmp_path / "out" / "vis").rglob("*.png")]
    assert len(drawn) == sum(len(v) for v in meta["test"].values())  # one figure per image, none overwritten
    assert all(p.resolve().is_relative_to((tmp_path / "out" / "vis").resolve()) for p in drawn)


def test_the_colour_map_is_opencvs_jet_and_the_outline_traces_the_mask_border():
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None, :]
    want = cv2.applyColorMap((ramp * 255).round().astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    assert np.abs(jet(ramp).astype(int) - want.astype(int)).max() <= 4
    mask = np.zeros((12, 12), bool)
    mask[3:9, 4:10] = True
    drawn = outline(np.zeros((12, 12, 3), np.uint8), mask, color=(0, 255, 0))
    green = drawn[..., 1] == 255
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    border = np.zeros((12, 12), np.uint8)
    cv2.drawContours(border, contours, -1, 1, thickness=1)
    assert np.array_equal(green, border.astype(bool))  # the border, nothing inside or outside


def test_a_thick_outline_stays_around_the_mask_and_off_the_image_border():
    """From a 300-pixel side on the outline is thicker than one pixel (4 at 600: the mask's border
    grown by 2 pixels each way) and frames nothing else, the image's border included."""
    mask = np.zeros((600, 600), bool)
    mask[250:350, 250:350] = True  # border rows and columns 250 and 349
    green = outline(np.zeros((600, 600, 3), np.uint8), mask, color=(0, 255, 0))[..., 1] == 255
    want = np.zeros((600, 600), bool)
    want[248:352, 248:352] = True
    want[253:347, 253:347] = False
    assert np.array_equal(green, want)


def test_a_line_scan_strip_gets_a_figure_of_stacked_panels_thick_enough_to_see():
    strip = np.zeros((200, 10000, 3), np.uint8)
    made = prediction_figure(strip, np.zeros((200, 10000), np.float32), ColorScale.around(0.0, 1.0), "s.png", 0.5,
                             "normal", 0.5)
    assert made.shape[1] <= 3 * DISPLAY_MAX + 100  # as wide as one panel and the colour bar
    assert made.shape[0] >= 3 * 60  # three panels of 61 pixels or more, one above the other
