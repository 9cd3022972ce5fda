"""scripts/build_styles_data.py on real source files (tests/fixtures/styles: five emoji in the three packages' own
formats, laid out as node_modules), without npm."""
import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "styles")
GOOGLE_64 = os.path.join(FIXTURES, "emoji-datasource-google", "img", "google", "64")
FLUENT_ASSETS = os.path.join(FIXTURES, "@lobehub", "fluent-emoji-3d", "assets")
OPENMOJI_SVG = os.path.join(FIXTURES, "openmoji", "color", "svg")
STYLES = ("rgb", "fluent", "openmoji")
# The four emoji every style draws (1FA89 harp has no Fluent image); 2764-FE0F is OpenMoji's 2764.svg.
LABELS = [
    ["train", "Animals & Nature", "1F431.png", "1F431", "Animals & Nature", "animal-mammal"],
    ["train", "Food & Drink", "1F955.png", "1F955", "Food & Drink", "food-vegetable"],
    ["train", "Smileys & Emotion", "2764-FE0F.png", "2764-FE0F", "Smileys & Emotion", "heart"],
    ["val", "Smileys & Emotion", "1F600.png", "1F600", "Smileys & Emotion", "face-smiling"],
]
# code -> its source file in each style (rgb, fluent, openmoji)
SOURCES = {"1F431": ("1f431.png", "1f431.webp", "1F431.svg"),
           "1F955": ("1f955.png", "1f955.webp", "1F955.svg"),
           "2764-FE0F": ("2764-fe0f.png", "2764-fe0f.webp", "2764.svg"),
           "1F600": ("1f600.png", "1f600.webp", "1F600.svg")}


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_styles_data", os.path.join(ROOT, "scripts",
                                                                                    "build_styles_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


def _is_val(code):
    """The split rule written out: sha256 of the ASCII code, first 8 bytes big-endian, mod 100 < 20."""
    return int(hashlib.sha256(code.encode("ascii")).hexdigest()[:16], 16) % 100 < 20


def _tree(folder):
    """{relative path: bytes} of every file under folder (None if it does not exist)."""
    if not os.path.exists(folder):
        return None
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def _out(root, row, style):
    return os.path.join(root, row[0], style, row[1], row[2])


def _pixels(path):
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def _rgba(path):
    with Image.open(path) as image:
        return image.convert("RGBA")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{size: (out folder, stdout)} of builds at 64 px (Google's own size) and 32 px."""
    runs = {}
    for size in (64, 32):
        out = str(tmp_path_factory.mktemp("styles") / f"styles{size}")
        capture = io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.stdout", capture)
            builder.main(["--package_dir", FIXTURES, "--out", out, "--size", str(size)])
        runs[size] = (out, capture.getvalue())
    return runs


def test_split_rule_and_join_keys():
    assert [code for code in SOURCES if _is_val(code)] == ["1F600"]
    assert all(builder.is_val(code) == _is_val(code) for code in list(SOURCES) + ["1FA89"])
    assert builder.code_key("2764-FE0F") == builder.code_key("2764") == (0x2764,)
    assert builder.code_key("23-fe0f-20e3") == builder.code_key("0023-FE0F-20E3") == (0x23, 0x20E3)
    england = "1F3F4-E0067-E0062-E0065-E006E-E0067-E007F"
    assert builder.code_key("1f3f4-e0067_e0062_e0065_e006e_e0067") == builder.code_key(england)


def test_counts_labels_and_files(built):
    out, stdout = built[32]
    with open(os.path.join(out, "labels.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["split", "class", "file", "unified", "category", "subcategory"]
    assert rows[1:] == LABELS
    assert all((row[0] == "val") == _is_val(row[3]) for row in LABELS)
    for split, count in (("train", 3), ("val", 1)):
        for style in STYLES:
            files = sorted(os.path.join(c, f) for c in os.listdir(os.path.join(out, split, style))
                           for f in os.listdir(os.path.join(out, split, style, c)))
            assert files == sorted(os.path.join(row[1], row[2]) for row in LABELS if row[0] == split)
            assert len(files) == count
    assert not any("1FA89" in path for path in _tree(out))                 # dropped from every style
    assert "| rgb | 4 | 1 | 0 | 0 |" in stdout and "| openmoji | 4 | 1 | 0 | 0 |" in stdout
    assert "| fluent | 3 | 1 | 1 | 0 |" in stdout and "fluent lacks: 1FA89" in stdout
    assert "4 subcategories; 4 with fewer than 5 train images." in stdout
    readme = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0" in readme
    assert "--out " + out + " --size 32 --npm_pack" in readme


def test_transparent_is_grey_and_compositing_formula(built):
    out = built[64][0]
    row = LABELS[3]                                                         # 1F600, val
    source = np.asarray(_rgba(os.path.join(GOOGLE_64, SOURCES[row[3]][0])), dtype=np.int64)
    got = _pixels(_out(out, row, "rgb")).astype(np.int64)                   # 64 px: no resize, compositing only
    clear, partial = source[..., 3] == 0, (source[..., 3] > 0) & (source[..., 3] < 255)
    assert clear.any() and partial.any()
    assert (got[clear] == 128).all()
    c, a = source[partial][:, :3], source[partial][:, 3:]
    assert (got[partial] == (c * a + 128 * (255 - a) + 127) // 255).all()
    fluent = np.asarray(_rgba(os.path.join(FLUENT_ASSETS, SOURCES[row[3]][1])))   # 256 px: Lanczos support 24 px
    assert (fluent[:32, :32, 3] == 0).all()
    assert _pixels(_out(built[32][0], row, "fluent"))[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize("style", STYLES)
def test_each_view_against_pillow_composite(built, style):
    """A second code path: Pillow's alpha_composite onto grey, then the same Lanczos resize, for every image."""
    import resvg_py
    out = built[32][0]
    for row in LABELS:
        name = SOURCES[row[3]][STYLES.index(style)]
        if style == "openmoji":
            png = resvg_py.svg_to_bytes(svg_path=os.path.join(OPENMOJI_SVG, name), width=128, height=128)
            source = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
        else:
            source = _rgba(os.path.join(GOOGLE_64 if style == "rgb" else FLUENT_ASSETS, name))
        grey = Image.new("RGBA", source.size, (128, 128, 128, 255))
        expected = Image.alpha_composite(grey, source).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
        assert np.array_equal(_pixels(_out(out, row, style)), np.asarray(expected)), (style, row[3])


def test_data_set_loads_as_multiview_folder(built):
    from inputs.multiview import MultiviewFolder
    from views import registry
    before = dict(registry._VIEWS)
    try:
        data = MultiviewFolder(os.path.join(built[32][0], "train"), ["L", "ab", "fluent", "openmoji"])
        img, target, _ = data[0]
        assert len(data) == 3 and data.classes == ["Animals & Nature", "Food & Drink", "Smileys & Emotion"]
        assert tuple(img.shape) == (9, 32, 32) and target == 0
    finally:
        registry._VIEWS.clear()
        registry._VIEWS.update(before)


def _fail(argv, capsys):
    """Run the script as its __main__ does; return its one error line."""
    with pytest.raises(SystemExit) as stop:
        builder.run_main(builder.main, argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def _broken(tmp_path, change):
    """A copy of the fixtures with `change(root)` applied."""
    root = str(tmp_path / "pkgs")
    shutil.copytree(FIXTURES, root)
    change(root)
    return root


def _set_version(path, version):
    manifest = json.load(open(path, encoding="utf-8"))
    json.dump(dict(manifest, version=version), open(path, "w", encoding="utf-8"))


@pytest.mark.parametrize("change, message", [
    (lambda root: shutil.rmtree(os.path.join(root, "openmoji")), "openmoji: no package.json"),
    (lambda root: _set_version(os.path.join(root, "openmoji", "package.json"), "16.0.0"),
     "holds openmoji@16.0.0, this builder is pinned to openmoji@17.0.0"),
    (lambda root: open(os.path.join(root, "@lobehub", "fluent-emoji-3d", "assets", "1f955.webp"), "wb").write(b"x"),
     "cannot read image"),
    (lambda root: shutil.rmtree(os.path.join(root, "@lobehub", "fluent-emoji-3d", "assets")), "does not exist"),
])
def test_bad_input_leaves_previous_build_untouched(built, tmp_path, capsys, change, message):
    out = str(tmp_path / "styles")
    shutil.copytree(built[32][0], out)                                      # a previous build of the script
    before = _tree(out)
    line = _fail(["--package_dir", _broken(tmp_path, change), "--out", out, "--size", "32"], capsys)
    assert message in line
    assert _tree(out) == before
    assert sorted(os.listdir(tmp_path)) == ["pkgs", "styles"]               # no temporary folder left beside it


def test_missing_package_dir_empty_result_and_foreign_out(tmp_path, capsys):
    out = str(tmp_path / "styles")
    line = _fail(["--package_dir", str(tmp_path / "nowhere"), "--out", out], capsys)
    assert "--package_dir" in line and "does not exist" in line and not os.path.exists(out)
    empty = _broken(tmp_path, lambda root: [os.remove(os.path.join(root, "@lobehub", "fluent-emoji-3d", "assets", f))
                                           for f in os.listdir(os.path.join(root, "@lobehub", "fluent-emoji-3d",
                                                                            "assets"))])
    assert "no emoji is drawn in all three styles" in _fail(["--package_dir", empty, "--out", out], capsys)
    assert not os.path.exists(out)
    os.makedirs(out)
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    assert "not a previous build" in _fail(["--package_dir", FIXTURES, "--out", out], capsys)
    assert _tree(out) == {"notes.txt": b"mine"}
