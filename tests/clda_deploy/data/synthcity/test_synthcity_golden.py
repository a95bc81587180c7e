"""SynthCity golden output: a fixed seed writes the same benchmark as the generator that made data/.

Every trained model was trained on a folder that ``generate_synthcity`` reuses only while its stored
parameters (``GENERATOR_VERSION`` included) match. So a change that alters what is rendered or where it
is written must bump the version, and one that does not (moving, splitting, reformatting the code) must
keep this digest. The golden value was computed with the generator as it was before it moved into
``clda_deploy/data/synthcity/`` (then ``clda_deploy/data/synthetic*.py``, version 3).

The digest covers file paths, PNG modes, shapes and decoded pixels, and synthcity.json without its
timing; not the compressed PNG bytes, which depend on the zlib that Pillow was built with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from clda_deploy.data.synthcity import GENERATOR_VERSION, generate_synthcity

GOLDEN_VERSION = 3
GOLDEN_DIGEST = "6ec31691ca6b3339127a82134c4143060893123e1a7e95410de49500d73e067f"


def folder_digest(root: Path) -> str:
    """sha256 over every file under ``root``: relative path, then pixels (PNG) or the record (JSON)."""
    digest = hashlib.sha256()
    for path in sorted(path for path in root.rglob("*") if path.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        if path.suffix == ".png":
            with Image.open(path) as image:
                pixels = np.asarray(image)
                digest.update(f"{image.mode}{pixels.shape}".encode())
            digest.update(pixels.tobytes())
        else:
            record = json.loads(path.read_text())
            del record["summary"]["seconds"]  # wall-clock time, the one field that is not deterministic
            digest.update(json.dumps(record, sort_keys=True).encode())
    return digest.hexdigest()


def test_fixed_seed_writes_the_golden_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "synthcity"
    generate_synthcity(out, 3, 3, 2, 64, 128, seed=3, workers=1, gap=1.0, progress=False)
    assert GENERATOR_VERSION == GOLDEN_VERSION, "a new generator version needs a new golden digest"
    assert folder_digest(out) == GOLDEN_DIGEST, "the output changed: bump GENERATOR_VERSION and the golden values"


def test_the_default_benchmark_of_version_3_is_reused(tmp_path: Path) -> None:
    """The record ``make data`` wrote for data/synthcity (parameters copied from it) is still accepted,
    so the benchmark and the models trained on it stay valid; nothing is rendered."""
    out = tmp_path / "synthcity"
    out.mkdir()
    parameters = {
        "num_source": 2000, "num_target": 1000, "num_val": 200, "height": 256, "width": 512,
        "seed": 0, "gap": 1.0, "version": 3,
    }  # fmt: skip
    summary = {"counts": {"source": 2000, "target_train": 1000, "target_val": 200}, "size": [256, 512]}
    record = {"generator": "synthcity", "parameters": parameters, "summary": summary}
    (out / "synthcity.json").write_text(json.dumps(record, indent=2))
    result = generate_synthcity(out, progress=False)
    assert result["reused"] is True and result["counts"] == summary["counts"]
    assert sorted(path.name for path in out.iterdir()) == ["synthcity.json"]
