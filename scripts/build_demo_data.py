"""Build the bundled demo data set `data/emoji64.npz` from the Noto Emoji images.

Source: the npm package `emoji-datasource-google` version 16.0.0 (images: Noto Emoji, Apache License 2.0, Google;
metadata `emoji.json`: MIT, Cal Henderson / iamcal). Each base emoji (top-level entry of `emoji.json` with
`has_img_google`, category "Component" dropped, no skin-tone modifier U+1F3FB..U+1F3FF) becomes one 64 x 64 RGB uint8
image, its RGBA composited onto white; its label is the index of its `category` in the sorted category names.

Train/val split (80/20, per emoji, no randomness): an emoji goes to val iff
    int.from_bytes(sha256(unified.encode("ascii")).digest()[:8], "big") % 100 < 20
where `unified` is its code string as in emoji.json (for example "1F600" or "0023-FE0F-20E3").
Within each split, items are in `sort_order` (emoji.json's order).

The output is one .npz written byte for byte reproducibly (fixed zip timestamps, entry order and deflate level), so
`np.load(path, allow_pickle=False)` reads it like any .npz and rebuilding gives the same sha256.

Rebuild (from the repository root):
    mkdir -p /tmp/emoji && cd /tmp/emoji && npm pack emoji-datasource-google@16.0.0 \
        && tar xzf emoji-datasource-google-16.0.0.tgz && cd -
    python scripts/build_demo_data.py --package_dir /tmp/emoji/package --out data/emoji64.npz
or let the script run `npm pack` into a temporary folder (explicit opt-in, needs npm and the registry):
    python scripts/build_demo_data.py --npm_pack --out data/emoji64.npz
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from PIL import Image

PACKAGE_NAME = "emoji-datasource-google"
PACKAGE_VERSION = "16.0.0"
IMAGE_SIZE = 64
IMAGE_SUBDIR = os.path.join("img", "google", "64")
DROPPED_CATEGORIES = ("Component",)
# Fitzpatrick skin-tone modifiers: an emoji carrying one is a variant of a base emoji, not a new class member.
SKIN_TONE_MODIFIERS = frozenset(("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"))
VAL_PERCENT = 20
# Fixed zip metadata: the zip format's earliest representable date, so no wall-clock time leaks into the file.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_COMPRESS_LEVEL = 9
# Entry order inside the .npz (part of the byte-for-byte contract).
NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "classes", "train_codes", "val_codes")


def split_bucket(unified):
    """Deterministic bucket in [0, 100) of an emoji code: sha256 of the ASCII code, first 8 bytes big-endian, mod 100."""
    digest = hashlib.sha256(unified.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def is_val(unified):
    """True iff this emoji belongs to the validation split (about VAL_PERCENT % of emoji)."""
    return split_bucket(unified) < VAL_PERCENT


def has_skin_tone(unified):
    """True iff any code point of the dash-separated `unified` string is a skin-tone modifier."""
    return any(code in SKIN_TONE_MODIFIERS for code in unified.upper().split("-"))


def select_entries(emoji_entries):
    """Base emoji with a Google image, outside the dropped categories, sorted by sort_order.

    Skin-tone variants live under each entry's `skin_variations`, so taking top-level entries only already excludes
    them; the explicit modifier check guards against a future emoji.json listing one at top level.
    """
    selected = [e for e in emoji_entries
                if e.get("has_img_google") and e["category"] not in DROPPED_CATEGORIES and not has_skin_tone(e["unified"])]
    selected.sort(key=lambda e: (e["sort_order"], e["unified"]))
    codes = [e["unified"] for e in selected]
    if len(set(codes)) != len(codes):
        raise ValueError("emoji.json lists a `unified` code twice")
    return selected


def load_rgb_on_white(path):
    """Read a PNG, composite its alpha onto white, return IMAGE_SIZE x IMAGE_SIZE x 3 uint8.

    Integer compositing with round-half-up, out = (c * a + 255 * (255 - a) + 127) // 255, so the result does not
    depend on Pillow's blending code.
    """
    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)  # H x W x 4
    if rgba.shape != (IMAGE_SIZE, IMAGE_SIZE, 4):
        raise ValueError(f"{path}: expected {IMAGE_SIZE}x{IMAGE_SIZE}, got {rgba.shape[1]}x{rgba.shape[0]}")
    colour, alpha = rgba[..., :3], rgba[..., 3:]  # H x W x 3, H x W x 1
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)  # H x W x 3


def build_arrays(package_dir):
    """All arrays of the demo set, keyed as in NPZ_KEYS, from an unpacked npm package folder."""
    with open(os.path.join(package_dir, "emoji.json"), encoding="utf-8") as f:
        entries = select_entries(json.load(f))
    classes = sorted({e["category"] for e in entries})
    class_index = {name: i for i, name in enumerate(classes)}
    arrays = {}
    for split, in_split in (("train", lambda e: not is_val(e["unified"])), ("val", lambda e: is_val(e["unified"]))):
        members = [e for e in entries if in_split(e)]
        images = [load_rgb_on_white(os.path.join(package_dir, IMAGE_SUBDIR, e["image"])) for e in members]
        arrays[f"{split}_images"] = np.stack(images).astype(np.uint8)  # N x 64 x 64 x 3
        arrays[f"{split}_labels"] = np.array([class_index[e["category"]] for e in members], dtype=np.int64)  # N
        arrays[f"{split}_codes"] = np.array([e["unified"] for e in members], dtype=np.str_)  # N
    arrays["classes"] = np.array(classes, dtype=np.str_)  # C
    return arrays


def write_npz_deterministic(path, arrays, keys=NPZ_KEYS):
    """Write `arrays` as an .npz whose bytes depend only on the arrays (and zlib): fixed timestamps, order and level.

    np.savez_compressed stamps each entry with the current time; this writes the same layout (one `<key>.npy` per
    array, .npy format 1.0, no pickles) with ZIP_DATE_TIME instead. Written to a temporary file, then renamed, so an
    interrupted build never leaves a truncated file at `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            for key in keys:
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), version=(1, 0), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
                info.create_system = 3  # Unix, whatever the building OS
                info.external_attr = 0o644 << 16
                archive.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                                 compresslevel=ZIP_COMPRESS_LEVEL)
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; a data file is world-readable like any checkout file
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def sha256_of_file(path):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_count_table(arrays):
    """Markdown table of per-class train / val counts, class index order, with totals."""
    classes = [str(c) for c in arrays["classes"]]
    train_counts = np.bincount(arrays["train_labels"], minlength=len(classes))
    val_counts = np.bincount(arrays["val_labels"], minlength=len(classes))
    lines = ["| index | class | train | val |", "|---:|---|---:|---:|"]
    for i, name in enumerate(classes):
        lines.append(f"| {i} | {name} | {train_counts[i]} | {val_counts[i]} |")
    lines.append(f"| | **total** | {train_counts.sum()} | {val_counts.sum()} |")
    return "\n".join(lines)


def majority_class_val_accuracy(arrays):
    """Val top-1 of always predicting the largest val class (the chance-level baseline of the demo set)."""
    val_counts = np.bincount(arrays["val_labels"], minlength=len(arrays["classes"]))
    return float(val_counts.max()) / float(val_counts.sum())


def npm_pack_into(directory):
    """Run `npm pack` for the pinned package into `directory`, unpack it, return the unpacked package folder."""
    spec = f"{PACKAGE_NAME}@{PACKAGE_VERSION}"
    subprocess.run(["npm", "pack", "--loglevel=warn", spec], cwd=directory, check=True, stdout=subprocess.DEVNULL)
    tarball = os.path.join(directory, f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz")
    with tarfile.open(tarball) as archive:
        # The "data" filter refuses absolute paths and links out of `directory` (Python >= 3.8.17 / 3.11.4).
        if hasattr(tarfile, "data_filter"):
            archive.extractall(directory, filter="data")
        else:
            archive.extractall(directory)
    return os.path.join(directory, "package")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--package_dir", help=f"an unpacked {PACKAGE_NAME}@{PACKAGE_VERSION} npm package folder")
    source.add_argument("--npm_pack", action="store_true",
                        help="run `npm pack` into a temporary folder (network access to the npm registry)")
    parser.add_argument("--out", default=os.path.join("data", "emoji64.npz"), help="output .npz path")
    args = parser.parse_args(argv)

    if args.npm_pack:
        with tempfile.TemporaryDirectory() as tmp:
            arrays = build_arrays(npm_pack_into(tmp))
    else:
        if not os.path.isfile(os.path.join(args.package_dir, "emoji.json")):
            parser.error(f"--package_dir {args.package_dir}: no emoji.json there (pass the unpacked `package` folder)")
        arrays = build_arrays(args.package_dir)

    write_npz_deterministic(args.out, arrays)
    print(class_count_table(arrays))
    print(f"majority-class val top-1: {majority_class_val_accuracy(arrays):.4f}")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    print(f"sha256 {sha256_of_file(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
