"""What do a model's visual tokens encode? A linear probe of the attributes of single-object scenes.

For each model folder given, the single-object scenes of a generated world go through the model's vision
tower (`get_image_features`: the merged visual tokens the language model reads); a logistic regression fits
each object attribute (shape, colour, size, position) on the world's *train* scenes from the mean and the
max of the tokens, and is scored on its *eval* scenes. Raw 28 x 28 pixels are probed the same way for scale.
Prints accuracy ×100 against the majority class of the eval scenes.

    OMP_NUM_THREADS=1 python bench/vision_probe.py --world runs/demo/world \
        --model base=~/.cache/unime/pretrained/qwen2_vl-<key>/model --model tagged=<folder>/model

Measured figures (the default base reads shape at ~30 %, majority 19 %; right after the tagging stage 43 %, after
the stages that follow it 23 %): docs/DEMO.md, "A second first run, and what the vision tower does not see".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ATTRIBUTES = ("shape", "colour", "size", "position")


def single_object_scenes(world: Path) -> tuple[list, list[str], dict[str, list[str]]]:
    from PIL import Image

    scenes = [json.loads(line) for line in (world / "scenes.jsonl").read_text(encoding="utf-8").splitlines()]
    scenes = [s for s in scenes if len(s["objects"]) == 1 and s["split"] in ("train", "eval")]
    images = [Image.open(world / s["image"]).convert("RGB") for s in scenes]
    labels = {a: [s["objects"][0][a] for s in scenes] for a in ATTRIBUTES}
    return images, [s["split"] for s in scenes], labels


def token_features(model_dir: str, images: list, batch: int = 32):
    import torch

    from unime.demo.vision_tagging import pooled_image_features
    from unime.models.loading import load_model

    loaded = load_model(model_dir)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            px = loaded.processor.image_processor(images=images[i:i + batch], return_tensors="pt")
            out.append(pooled_image_features(loaded.model, px["pixel_values"].to(loaded.dtype), px["image_grid_thw"]))
    return torch.cat(out).float().numpy()


def probe(features, split: list[str], labels: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """Per attribute (eval accuracy, eval majority share) of a logistic regression fit on the train rows."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    train = np.array([s == "train" for s in split])
    x = (features - features[train].mean(0)) / (features[train].std(0) + 1e-6)
    out = {}
    for attr, values in labels.items():
        y = np.array(values)
        clf = LogisticRegression(max_iter=3000).fit(x[train], y[train])
        acc = float((clf.predict(x[~train]) == y[~train]).mean())
        majority = max(float((y[~train] == v).mean()) for v in set(y[~train]))
        out[attr] = (acc, majority)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="a generated world (unime data synth)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                    help="a model folder to probe (repeatable)")
    args = ap.parse_args()
    import numpy as np

    images, split, labels = single_object_scenes(Path(args.world))
    print(f"{split.count('train')} train / {split.count('eval')} eval single-object scenes")
    rows = [("raw pixels 28x28", np.stack([np.asarray(im.resize((28, 28)), dtype=np.float32).ravel() / 255
                                          for im in images]))]
    for spec in args.model:
        name, _, folder = spec.partition("=")
        rows.append((name, token_features(str(Path(folder).expanduser()), images)))
    for name, feats in rows:
        res = probe(feats, split, labels)
        print(f"{name:24s} " + "  ".join(f"{a} {100 * acc:.0f} (majority {100 * maj:.0f})"
                                         for a, (acc, maj) in res.items()), flush=True)


if __name__ == "__main__":
    main()
