"""Build a real multiview data set (issue #25): each emoji drawn by three artists, one view folder per style:
DIR/{train,val}/{rgb,fluent,openmoji}/<category>/<unified>.png (rgb: Noto Emoji by Google, the colour views' source;
fluent: Microsoft Fluent Emoji 3D; openmoji: OpenMoji), DIR/labels.csv (split,class,file,unified,category,subcategory)
and DIR/README.md (sources, licences, counts). Train on it with
    python train_CMC.py --dataset multiview_folder --data_folder data/styles32 --views L ab fluent openmoji ...

Sources, pinned (read from --package_dir, or fetched by `npm pack` with --npm_pack; nothing else is ever downloaded):
emoji-datasource-google@16.0.0 (images Apache-2.0, Google; emoji.json MIT, iamcal), @lobehub/fluent-emoji-3d@1.1.0
(MIT; 256 px webp named by lower-case code points, FE0F kept), openmoji@17.0.0 (CC BY-SA 4.0; SVG, named by upper-case
code points, often without FE0F). Instances: the demo's selection (scripts/build_demo_data.py select_entries) that all
three styles have, joined on emoji.json's `unified` with FE0F ignored (`code_key`); split by the demo's sha256 rule.

Each image: RGBA composited onto mid grey (128,128,128) at source resolution, then Lanczos-resized to --size px, saved
as an RGB PNG without metadata. OpenMoji's SVGs are rasterised by resvg (pip `resvg-py`): a self-contained Rust wheel
with no system library (cairosvg needs libcairo from the OS), and resvg is a maintained, strict SVG renderer.

--package_dir PKGROOT is laid out as npm's node_modules (what `npm install --prefix X <the three specs>` gives in
X/node_modules): PKGROOT/emoji-datasource-google/, PKGROOT/@lobehub/fluent-emoji-3d/, PKGROOT/openmoji/, each with
its package.json. Rebuild (from the repository root):
    python scripts/build_styles_data.py --out data/styles32 --size 32 --npm_pack
    mkdir -p /tmp/p && npm install --prefix /tmp/p --no-save --ignore-scripts emoji-datasource-google@16.0.0 \
        @lobehub/fluent-emoji-3d@1.1.0 openmoji@17.0.0
    python scripts/build_styles_data.py --out /tmp/styles64 --size 64 --package_dir /tmp/p/node_modules
"""
import argparse
import collections
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [SCRIPTS, os.path.dirname(SCRIPTS)]
from build_demo_data import is_val, select_entries  # noqa: E402  (the demo's selection and split rule, shared)
from engine.errors import UserError, run_main  # noqa: E402

GOOGLE, FLUENT, OPENMOJI = "emoji-datasource-google", "@lobehub/fluent-emoji-3d", "openmoji"
PACKAGES = {GOOGLE: "16.0.0", FLUENT: "1.1.0", OPENMOJI: "17.0.0"}
STYLES = ("rgb", "fluent", "openmoji")          # view folders: rgb (Google) feeds the colour views L, ab, ...
# style -> (package, image folder in it, file suffix, the file stem of a `unified` code when spelled exactly)
SOURCES = {"fluent": (FLUENT, "assets", ".webp", str.lower), "openmoji": (OPENMOJI, "color/svg", ".svg", str)}
# One background for every style: one that differed between styles would give the style away in every view, the ab
# view included. Grey rather than white or black: all three are neutral (a = b = 0 in Lab, so ab cannot see which),
# but against white the white parts of a drawing, and against black OpenMoji's black outlines, would merge with the
# background in L; mid grey (L about 54) keeps both.
GREY = 128
OPENMOJI_SUPERSAMPLE = 4                       # the SVG is rendered at 4 x --size, then resized like the bitmaps
MARKER = "# Emoji styles data set (scripts/build_styles_data.py)"
ATTRIBUTION = "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def code_key(name):
    """The join key of a code-point name ('1F600', '2764-FE0F', '1f3f4-e0067_..._e0067'): code points as ints, FE0F
    (emoji presentation selector, spelled inconsistently by the packages) dropped; a tag sequence that lacks its
    closing CANCEL TAG E007F (Fluent's England/Scotland/Wales names) gets it back."""
    points = [int(part, 16) for part in name.replace("_", "-").split("-") if int(part, 16) != 0xFE0F]
    if points and 0xE0020 <= points[-1] <= 0xE007E:
        points.append(0xE007F)
    return tuple(points)


def read_json(path):
    """A JSON file's content; a missing or malformed file is a UserError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} ({type(error).__name__}: {error})") from None


def check_package(folder, name):
    """Refuse a missing package folder or one of another version than pinned."""
    manifest = os.path.join(folder, "package.json")
    if not os.path.isfile(manifest):
        raise UserError(f"{folder}: no package.json (expected the unpacked npm package {name}@{PACKAGES[name]})")
    found = read_json(manifest)
    if (found.get("name"), found.get("version")) != (name, PACKAGES[name]):
        raise UserError(f"{folder} holds {found.get('name')}@{found.get('version')}, this builder is pinned to "
                        f"{name}@{PACKAGES[name]} (npm pack {name}@{PACKAGES[name]})")


def index_images(folder, suffix):
    """{code_key: sorted file names} of the images in folder."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} does not exist (an incomplete package?)")
    index = collections.defaultdict(list)
    for name in sorted(n for n in os.listdir(folder) if n.endswith(suffix)):
        try:
            index[code_key(name[:-len(suffix)])].append(name)
        except ValueError:                                      # not a code-point name: not an emoji image
            pass
    return index


def pick(unified, exact, index):
    """The file of emoji `unified` in a style's index: its exact name, else the one name equal up to FE0F; None if
    the style lacks it."""
    names = index.get(code_key(unified), [])
    if len(names) > 1 and exact not in names:
        raise UserError(f"{unified}: several files match up to FE0F ({', '.join(names)}) and none exactly")
    return exact if exact in names else (names[0] if names else None)


def join_styles(root):
    """(instances, lacking, selected): the selected emoji.json entries with a file in every style
    (entry['files'][style] = path), {style: [unified codes the style lacks]}, and the selected codes."""
    for name in PACKAGES:
        check_package(os.path.join(root, name), name)
    google = os.path.join(root, GOOGLE)
    entries = select_entries(read_json(os.path.join(google, "emoji.json")))
    folders = {style: os.path.join(root, package, sub) for style, (package, sub, _, _) in SOURCES.items()}
    indexes = {style: index_images(folders[style], SOURCES[style][2]) for style in SOURCES}
    instances, lacking = [], {style: [] for style in STYLES}
    for entry in entries:
        files = {"rgb": os.path.join(google, "img", "google", "64", entry["image"])}
        for style, (_, _, suffix, spell) in SOURCES.items():
            name = pick(entry["unified"], spell(entry["unified"]) + suffix, indexes[style])
            if name is None:
                lacking[style].append(entry["unified"])
            else:
                files[style] = os.path.join(folders[style], name)
        if len(files) == len(STYLES):
            instances.append(dict(entry, files=files))
    if not instances:
        raise UserError(f"no emoji is drawn in all three styles under {root}: nothing to write")
    return instances, lacking, [entry["unified"] for entry in entries]


def read_rgba(path, style, size):
    """The source as H x W x 4 uint8; OpenMoji's SVG rendered at OPENMOJI_SUPERSAMPLE x size."""
    try:
        if style == "openmoji":
            try:
                import resvg_py
            except ImportError:
                raise UserError("rasterising OpenMoji's SVGs needs resvg: pip install resvg-py") from None
            side = OPENMOJI_SUPERSAMPLE * size
            png = resvg_py.svg_to_bytes(svg_path=path, width=side, height=side, skip_system_fonts=True)
            source = io.BytesIO(bytes(png))
        else:
            source = path
        with Image.open(source) as image:
            return np.asarray(image.convert("RGBA"), dtype=np.uint8)
    except IMAGE_ERRORS as error:
        raise UserError(f"cannot read image {path} ({type(error).__name__}: {error})") from None


def render(path, style, size):
    """One view image (PIL RGB): alpha composited onto grey at source resolution with integer round-to-nearest,
    (c * a + 128 * (255 - a) + 127) // 255 (equal to Pillow's alpha_composite onto opaque grey for every c, a), then
    Lanczos-resized to size x size (composited first, so the resize never sees a transparent pixel's colour)."""
    rgba = read_rgba(path, style, size)
    colour, alpha = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
    grey = ((colour * alpha + GREY * (255 - alpha) + 127) // 255).astype(np.uint8)       # H x W x 3
    return Image.fromarray(grey, "RGB").resize((size, size), Image.Resampling.LANCZOS)


def write_images(instances, out, size):
    """Every instance's three views under out/<split>/<style>/<category>/<unified>.png; returns the labels rows."""
    rows = []
    for entry in instances:
        split, file = ("val" if is_val(entry["unified"]) else "train"), entry["unified"] + ".png"
        for style in STYLES:
            folder = os.path.join(out, split, style, entry["category"])
            os.makedirs(folder, exist_ok=True)
            render(entry["files"][style], style, size).save(os.path.join(folder, file), format="PNG",
                                                             compress_level=9)
        rows.append((split, entry["category"], file, entry["unified"], entry["category"], entry["subcategory"]))
    return sorted(rows)


def report(rows, lacking, selected):
    """Markdown: each style's selected emoji had and lacked per split, the instances per class and split, and how
    many subcategories remain (and have fewer than 5 train images)."""
    val_selected = sum(map(is_val, selected))
    lines = ["| style | has train | has val | lacks train | lacks val |", "|---|---:|---:|---:|---:|"]
    for style, codes in lacking.items():
        val_lacking = sum(map(is_val, codes))
        lines.append(f"| {style} | {len(selected) - val_selected - len(codes) + val_lacking} | "
                     f"{val_selected - val_lacking} | {len(codes) - val_lacking} | {val_lacking} |")
    counts = collections.Counter((row[1], row[0]) for row in rows)
    lines += ["", "| class | train | val |", "|---|---:|---:|"]
    lines += [f"| {c} | {counts[c, 'train']} | {counts[c, 'val']} |" for c in sorted({row[1] for row in rows})]
    total = collections.Counter(row[0] for row in rows)
    train = collections.Counter(row[5] for row in rows if row[0] == "train")
    subcategories = {row[5] for row in rows}
    few = sum(train[name] < 5 for name in subcategories)
    return "\n".join(lines + [f"| **total** | {total['train']} | {total['val']} |", "",
                              f"{len(subcategories)} subcategories; {few} with fewer than 5 train images."])


def readme(rows, lacking, selected, size, out):
    """DIR/README.md: sources, licences, counts, rules, rebuild command."""
    return f"""{MARKER}

Each emoji drawn by three artists, {size} x {size} RGB PNG: one instance = the same `<class>/<unified>.png` in every
view folder (`--dataset multiview_folder`, e.g. `--views L ab fluent openmoji`). Labels: `labels.csv`.

## Sources and licences

| folder | npm package | images | licence |
|---|---|---|---|
| rgb | emoji-datasource-google@{PACKAGES[GOOGLE]} | Noto Emoji, Google (64 px png) | Apache License 2.0 |
| fluent | {FLUENT}@{PACKAGES[FLUENT]} | Fluent Emoji 3D, Microsoft (256 px webp) | MIT (Microsoft; LobeHub) |
| openmoji | openmoji@{PACKAGES[OPENMOJI]} | OpenMoji (SVG, rasterised by resvg) | CC BY-SA 4.0 |

Codes, names, categories: `emoji.json` of emoji-datasource (iamcal), MIT License. All images are modified (composited
onto grey, resized). **OpenMoji**:

> {ATTRIBUTION}

(<https://openmoji.org/>, <https://creativecommons.org/licenses/by-sa/4.0/>): the `openmoji/` folders are adapted
material, shared under the same licence. Microsoft's Fluent Emoji has no country flags: the package's flags follow
Noto's wavy flag design, so for class Flags the `rgb` and `fluent` views are nearly the same drawing.

## Selection and counts

emoji.json's top-level entries with a Google image, without category Component or skin-tone modifiers
({len(selected)}), kept when every style draws them (joined on `unified`, FE0F ignored). Classes: the categories;
`labels.csv` also holds each emoji's subcategory.

{report(rows, lacking, selected)}

## Rules

- Split: val iff `int.from_bytes(hashlib.sha256(unified.encode("ascii")).digest()[:8], "big") % 100 < 20`.
- Compositing: every style onto the same mid grey (128, 128, 128), `(c * a + 128 * (255 - a) + 127) // 255`, at
  source resolution, then Lanczos to {size} px (OpenMoji rendered at {OPENMOJI_SUPERSAMPLE * size} px first).

## Rebuild

    python scripts/build_styles_data.py --out {out} --size {size} --npm_pack
"""


def npm_pack_into(directory):
    """`npm pack` the pinned packages into directory, unpacked as node_modules would hold them; returns directory."""
    for name, version in PACKAGES.items():
        try:
            subprocess.run(["npm", "pack", "--loglevel=warn", f"{name}@{version}"], cwd=directory, check=True,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as error:
            raise UserError(f"npm pack {name}@{version} failed ({error}); or pass --package_dir") from None
        tarball = os.path.join(directory, f"{name.lstrip('@').replace('/', '-')}-{version}.tgz")
        unpacked = tempfile.mkdtemp(dir=directory)
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
        os.rename(os.path.join(unpacked, "package"), os.path.join(directory, name))
    return directory


def refuse_foreign(out):
    """An existing non-empty --out is replaced only when it is a previous build of this script (README's first line)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a folder")
    readme_path, first = os.path.join(out, "README.md"), ""
    if os.path.isfile(readme_path):
        with open(readme_path, encoding="utf-8", errors="replace") as f:
            first = f.readline().rstrip("\n")
    if os.path.isdir(out) and os.listdir(out) and first != MARKER:
        raise UserError(f"--out {out} exists and is not a previous build of this script: choose another folder")


def build(root, args):
    """Join, write into a temporary folder beside --out, then swap it in; returns (rows, lacking, selected)."""
    instances, lacking, selected = join_styles(root)
    out = os.path.abspath(args.out)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=os.path.dirname(out))
    try:
        rows = write_images(instances, tmp, args.size)
        with open(os.path.join(tmp, "labels.csv"), "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([("split", "class", "file", "unified", "category",
                                                           "subcategory")] + rows)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(readme(rows, lacking, selected, args.size, args.out))
        os.chmod(tmp, 0o755)                                   # mkdtemp makes 0700
        if os.path.isdir(out):                                 # empty, or a previous build (refuse_foreign checked)
            os.rename(out, tmp + ".old")
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp + ".old", ignore_errors=True)
    return rows, lacking, selected


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--package_dir", help="folder holding the three unpacked packages, laid out as node_modules")
    source.add_argument("--npm_pack", action="store_true", help="run `npm pack` into a temporary folder (network)")
    parser.add_argument("--out", required=True, help="the data set folder to write")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    args = parser.parse_args(argv)
    if args.size < 1:
        raise UserError(f"--size {args.size}: give a positive number of pixels")
    if args.package_dir is not None and not os.path.isdir(args.package_dir):
        raise UserError(f"--package_dir {args.package_dir} does not exist")
    refuse_foreign(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    start = time.time()
    if args.npm_pack:
        with tempfile.TemporaryDirectory() as tmp:
            rows, lacking, selected = build(npm_pack_into(tmp), args)
    else:
        rows, lacking, selected = build(args.package_dir, args)
    print(f"selected {len(selected)} emoji; {len(rows)} drawn in all {len(STYLES)} styles")
    for style, codes in lacking.items():
        print(f"{style} lacks: {' '.join(codes)}" if codes else f"{style} lacks none")
    print(report(rows, lacking, selected))
    print(f"wrote {args.out} ({len(rows) * len(STYLES)} images, {args.size} px) in {time.time() - start:.1f} s")


if __name__ == "__main__":
    run_main(main)
