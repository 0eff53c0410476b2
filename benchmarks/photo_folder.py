"""Write a folder of real photographs for the memory benchmark (benchmarks/memory.md): crops of scikit-learn's two
bundled photographs (china.jpg, flower.jpg) at random places and scales, mirrored at random, tinted by class, saved as
224x224 JPEG files in DIR/<class>/.

    python benchmarks/photo_folder.py DIR [--per-class 2000] [--classes 10] [--size 224]"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('dir'); ap.add_argument('--per-class', type=int, default=2000)
    ap.add_argument('--classes', type=int, default=10); ap.add_argument('--size', type=int, default=224)
    a = ap.parse_args()
    photos, rng = load_sample_images().images, np.random.default_rng(0)
    tints = rng.uniform(0.55, 1.0, (a.classes, 3))   # a colour cast per class: the label is learnable
    for c in range(a.classes):
        d = Path(a.dir)/f'class{c}'; d.mkdir(parents=True, exist_ok=True)
        for i in range(a.per_class):
            ph = photos[rng.integers(len(photos))]
            s = int(rng.integers(96, min(ph.shape[:2])))
            y, x = rng.integers(0, ph.shape[0] - s), rng.integers(0, ph.shape[1] - s)
            im = Image.fromarray((ph[y:y + s, x:x + s] * tints[c]).astype(np.uint8)).resize((a.size, a.size))
            if rng.random() < 0.5: im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im.save(d/f'{i:05d}.jpg', quality=90)
    print(f"wrote {a.classes * a.per_class} images to {a.dir}")

if __name__ == '__main__': main()
