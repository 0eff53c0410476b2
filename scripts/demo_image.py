"""Write one Fashion-MNIST test image as a PNG file, enlarged and in colour, as a stand-in for "a new image"
(the article's last step labels an image the model has never seen)."""
import sys
from pathlib import Path
from PIL import Image
from lepton_nb.data import load_fashion_mnist

out = Path(sys.argv[1] if len(sys.argv) > 1 else 'example.png')
fm = load_fashion_mnist()
i = int(sys.argv[2]) if len(sys.argv) > 2 else 0
Image.fromarray(fm.x_valid[i, 0].numpy()).resize((112, 112)).convert('RGB').save(out)
print(f"wrote {out}: test image {i} (class {fm.classes[int(fm.y_valid[i])]!r}) as a 112x112 RGB PNG")
