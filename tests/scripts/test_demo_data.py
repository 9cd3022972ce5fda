"""The bundled demo data set data/emoji64.npz (see data/README.md) and its builder scripts/build_demo_data.py."""
import hashlib
import importlib.util
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image
from conftest import ROOT as REPO_ROOT

NPZ_PATH = os.path.join(REPO_ROOT, "data", "emoji64.npz")
BUILDER_PATH = os.path.join(REPO_ROOT, "scripts", "build_demo_data.py")

EXPECTED_SHA256 = "378e97411c4e6f6a8b5e8442cc67e3d7b3f4d552d1b985d6575009e1cd220e97"
# class name -> (train count, val count), in class index order (sorted names).
EXPECTED_COUNTS = {
    "Activities": (68, 17),
    "Animals & Nature": (130, 29),
    "Flags": (220, 50),
    "Food & Drink": (93, 38),
    "Objects": (222, 42),
    "People & Body": (309, 77),
    "Smileys & Emotion": (135, 34),
    "Symbols": (175, 49),
    "Travel & Places": (176, 42),
}
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_demo_data", BUILDER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builder():
    return _load_builder()


@pytest.fixture(scope="module")
def demo():
    with np.load(NPZ_PATH, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _val_by_hash(code):
    """The split rule written out independently: sha256 of the code, first 8 bytes big-endian, mod 100 < 20."""
    return int(hashlib.sha256(code.encode("ascii")).hexdigest()[:16], 16) % 100 < 20


def test_file_sha256_is_pinned():
    with open(NPZ_PATH, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == EXPECTED_SHA256


def test_keys_dtypes_and_shapes(demo):
    assert sorted(demo) == sorted(["train_images", "train_labels", "val_images", "val_labels", "classes",
                                   "train_codes", "val_codes"])
    for split in ("train", "val"):
        images, labels, codes = demo[f"{split}_images"], demo[f"{split}_labels"], demo[f"{split}_codes"]
        assert images.dtype == np.uint8 and images.shape[1:] == (64, 64, 3)
        assert labels.dtype == np.int64 and labels.shape == (images.shape[0],)
        assert codes.dtype.kind == "U" and codes.shape == (images.shape[0],)
    assert demo["classes"].dtype.kind == "U"


def test_classes_sorted_and_per_class_counts(demo):
    classes = [str(c) for c in demo["classes"]]
    assert classes == sorted(classes) == list(EXPECTED_COUNTS)
    train_counts = np.bincount(demo["train_labels"], minlength=len(classes)).tolist()
    val_counts = np.bincount(demo["val_labels"], minlength=len(classes)).tolist()
    assert len(train_counts) == len(val_counts) == len(classes)  # no label outside the class list
    assert list(zip(train_counts, val_counts)) == list(EXPECTED_COUNTS.values())


def test_splits_disjoint_unique_and_no_skin_tones(demo):
    train_codes, val_codes = set(demo["train_codes"].tolist()), set(demo["val_codes"].tolist())
    assert len(train_codes) == len(demo["train_codes"]) and len(val_codes) == len(demo["val_codes"])
    assert not train_codes & val_codes
    for code in train_codes | val_codes:
        assert not SKIN_TONES & set(code.split("-")), code


def test_split_rule_reproduces_from_codes(demo):
    assert not any(_val_by_hash(code) for code in demo["train_codes"].tolist())
    assert all(_val_by_hash(code) for code in demo["val_codes"].tolist())


def test_majority_class_baseline(demo, builder):
    # The README states 77 / 378 (People & Body) as the chance-level val top-1.
    assert builder.majority_class_val_accuracy(demo) == 77 / 378  # float(77) / float(378): exact


def test_background_corners_white_and_content_not(demo):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        images = demo[f"{split}_images"]
        sample = images[rng.choice(len(images), size=50, replace=False)]  # 50 x 64 x 64 x 3
        corners = sample[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # 50 x 4 x 3
        assert (corners == 255).all(axis=-1).mean() > 0.9
        # Every image draws something: not all-white, and non-white pixels cover a real fraction of it.
        non_white = (sample < 250).any(axis=-1).mean(axis=(1, 2))  # 50
        assert (non_white > 0.05).all()


def test_rewriting_loaded_arrays_reproduces_file_bytes(demo, builder, tmp_path):
    """Second code path: np.load's arrays, written again by the builder's writer, give the pinned bytes."""
    out = tmp_path / "again.npz"
    builder.write_npz_deterministic(str(out), demo)
    assert builder.sha256_of_file(str(out)) == EXPECTED_SHA256
    with zipfile.ZipFile(NPZ_PATH) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == [f"{k}.npy" for k in builder.NPZ_KEYS]
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) and i.compress_type == zipfile.ZIP_DEFLATED for i in infos)


def test_split_bucket_matches_written_out_rule(builder):
    for code in ["1F600", "0023-FE0F-20E3", "1F1FA-1F1F8", "2764-FE0F"]:
        assert builder.is_val(code) == _val_by_hash(code)
    assert builder.split_bucket("1F600") == int.from_bytes(hashlib.sha256(b"1F600").digest()[:8], "big") % 100


def _write_fake_package(root, entries, pixels):
    """A tiny unpacked npm package: emoji.json plus one 64x64 PNG per entry in img/google/64/."""
    image_dir = root / "img" / "google" / "64"
    image_dir.mkdir(parents=True)
    for entry, rgba in zip(entries, pixels):
        Image.fromarray(rgba).save(image_dir / entry["image"])
    (root / "emoji.json").write_text(json.dumps(entries), encoding="utf-8")


def test_build_from_fake_package(builder, tmp_path):
    rng = np.random.default_rng(0)

    def entry(code, category, order, has_img=True):
        return {"unified": code, "image": code.lower() + ".png", "category": category, "sort_order": order,
                "has_img_google": has_img}

    entries = [
        entry("1F600", "Smileys & Emotion", 5),
        entry("0023-FE0F-20E3", "Symbols", 2),
        entry("1F3FB", "Component", 9),                   # dropped: Component
        entry("1F44B-1F3FD", "People & Body", 3),        # dropped: skin-tone modifier at top level
        entry("1F44B", "People & Body", 1),
        entry("1FAE9", "Smileys & Emotion", 4, False),   # dropped: no Google image
    ] + [entry(f"1F{0x300 + i:03X}", "Travel & Places", 10 + i) for i in range(12)]
    pixels = [rng.integers(0, 256, size=(64, 64, 4), dtype=np.uint8) for _ in entries]
    _write_fake_package(tmp_path, entries, pixels)

    arrays = builder.build_arrays(str(tmp_path))
    assert arrays["classes"].tolist() == ["People & Body", "Smileys & Emotion", "Symbols", "Travel & Places"]
    kept = sorted([e for e in entries if e["category"] != "Component" and e["has_img_google"]
                   and "1F3FD" not in e["unified"]], key=lambda e: e["sort_order"])
    by_code = {e["unified"]: (e, p) for e, p in zip(entries, pixels)}
    for split, want_val in (("train", False), ("val", True)):
        members = [e for e in kept if _val_by_hash(e["unified"]) == want_val]
        assert arrays[f"{split}_codes"].tolist() == [e["unified"] for e in members]
        labels = [arrays["classes"].tolist().index(e["category"]) for e in members]
        assert arrays[f"{split}_labels"].tolist() == labels
        for code, image in zip(arrays[f"{split}_codes"].tolist(), arrays[f"{split}_images"]):
            rgba = by_code[code][1].astype(np.int64)
            # Alpha over white, rounded to nearest: c * a / 255 + 255 * (1 - a / 255).
            expected = np.floor(rgba[..., :3] * rgba[..., 3:] / 255 + (255 - rgba[..., 3:]) + 0.5)
            np.testing.assert_array_equal(image, expected.astype(np.uint8))
    assert len(arrays["train_codes"]) + len(arrays["val_codes"]) == len(kept) == 15


def test_composite_matches_pillow(builder, tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(64, 64, 4), dtype=np.uint8)
    rgba[:8, :8, 3] = 0      # fully transparent block -> pure white
    rgba[8:16, :8, 3] = 255  # opaque block -> its own colour
    path = tmp_path / "x.png"
    Image.fromarray(rgba).save(path)
    ours = builder.load_rgb_on_white(str(path))
    white = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    pillow = np.asarray(Image.alpha_composite(white, Image.open(path).convert("RGBA")).convert("RGB"))
    np.testing.assert_array_equal(ours, pillow)
    assert (ours[:8, :8] == 255).all()
    np.testing.assert_array_equal(ours[8:16, :8], rgba[8:16, :8, :3])


def test_wrong_image_size_is_an_error(builder, tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGBA", (32, 32)).save(path)
    with pytest.raises(ValueError, match="expected 64x64"):
        builder.load_rgb_on_white(str(path))
