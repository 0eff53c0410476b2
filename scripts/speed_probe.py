"""One probe run of the `fast` recipe with one thing changed, as notebook 10's lab notes list them.

The argument is a JSON object: `budget` (seconds), `seed`, any override of `train_classifier` (width, hidden, lr, bs,
augment, label_smoothing, ...), and optionally `net`, a variant of the network built here instead of `fast_cnn`:
`pf` (pool before batch norm, default true), `c2` (channels of the second block), `conv3` (a third convolution at
7x7 with that many channels, before the dense layer) or `third` (a third block and global max-pooling, no dense
layer). Prints one JSON line: the settings, the test accuracy, the epochs done and the seconds of training.

    python scripts/speed_probe.py '{"budget": 120, "augment": "flip,erase"}'
    python scripts/speed_probe.py '{"budget": 20, "net": {"c2": 64}}'
"""
import json, sys, time
from pathlib import Path
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lepton_nb.cnn as C
from lepton_nb.data import get_data


def block(ci:int, co:int, pool_first:bool) -> nn.Sequential:
    conv = nn.Conv2d(ci, co, 3, padding=1, bias=False)
    if pool_first: return nn.Sequential(conv, nn.MaxPool2d(2), nn.BatchNorm2d(co), nn.ReLU(inplace=True))
    return nn.Sequential(conv, nn.BatchNorm2d(co), nn.ReLU(inplace=True), nn.MaxPool2d(2))


def variant(net:dict):
    "A builder with `fast_cnn`'s signature for the variant `net` describes (28 x 28 inputs)."
    def build(n_classes=10, channels=1, width=16, hidden=128, **_):
        pf, c2 = net.get('pf', True), net.get('c2', 2 * width)
        layers = [block(channels, width, pf), block(width, c2, pf)]
        if net.get('third'):
            return nn.Sequential(*layers, block(c2, 4 * width, pf), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                                 nn.Linear(4 * width, n_classes))
        if net.get('conv3'):
            c3 = net['conv3']
            layers += [nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True)]
            c2 = c3
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c2 * 49, hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, n_classes))
    return build


def main(spec:dict):
    settings = dict(spec)
    if 'net' in spec: C.ARCHS['fast'] = variant(spec.pop('net'))
    budget, seed = spec.pop('budget'), spec.pop('seed', 0)
    t = time.perf_counter()
    _, m = C.train_classifier(get_data('fashion-mnist'), 'fast', time_budget=budget, seed=seed, progress=False, **spec)
    print(json.dumps(dict(settings=settings, cpu=torch.backends.cpu.get_cpu_capability(), acc=m['test_accuracy'],
                          epochs=m['epochs'], train_s=m['train_seconds'], wall=round(time.perf_counter() - t, 1))))


if __name__ == '__main__':
    main(json.loads(sys.argv[1]))
