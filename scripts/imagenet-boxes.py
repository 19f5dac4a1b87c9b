#!/usr/bin/env python3
"""Writes the object boxes of the ILSVRC 2012 validation set as the CSV that castream's
`boxes = "…"` key reads: one `name,x0,y0,x1,y1` line per object, in the original image's pixels,
end exclusive (ILSVRC's `xmax`/`ymax` are inclusive, so 1 is added).

Usage: python3 scripts/imagenet-boxes.py <folder of val XML files> <out.csv> [--suffix .JPEG]

`name` is the XML's <filename> plus the suffix (the images' names as the validation list gives
them). Only the standard library is needed.
"""
import argparse
import pathlib
import sys
import xml.etree.ElementTree as ET


def boxes(xml_file: pathlib.Path, suffix: str):
    root = ET.parse(xml_file).getroot()
    filename = root.findtext("filename")
    if not filename:
        raise ValueError(f"{xml_file}: no <filename>")
    name = filename if filename.lower().endswith(suffix.lower()) else filename + suffix
    for obj in root.iter("object"):
        b = obj.find("bndbox")
        if b is None:
            continue
        x0, y0, x1, y1 = (int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        yield name, x0, y0, x1 + 1, y1 + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", type=pathlib.Path, help="folder of ILSVRC2012_val_*.xml files")
    parser.add_argument("out", type=pathlib.Path, help="CSV to write")
    parser.add_argument("--suffix", default=".JPEG", help="appended to <filename> (default .JPEG)")
    args = parser.parse_args()
    files = sorted(args.annotations.glob("*.xml"))
    if not files:
        print(f"error: no .xml files in {args.annotations}; Fix: give the folder of the validation annotations", file=sys.stderr)
        return 1
    lines = ["name,x0,y0,x1,y1"]
    for f in files:
        lines.extend(",".join(map(str, row)) for row in boxes(f, args.suffix))
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.out)
    print(f"wrote {len(lines) - 1} boxes of {len(files)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
