"""A folder whose decoded images would pass the memory budget is read from disk: the same batches, labels and
statistics as in memory; its cache written atomically and rebuilt when damaged; the process's memory bounded."""
import os, signal, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lepton_nb.data as D
from lepton_nb.loaders import ImageStore, TensorLoader


def photo_folder(root:Path, n_per_class:int=12, size:int=48, classes=('red', 'green', 'blue'), seed:int=0) -> Path:
    "Crops of scikit-learn's two bundled photographs, tinted by class, as JPEG and PNG files: real images."
    from sklearn.datasets import load_sample_images
    photos, rng = load_sample_images().images, np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root/c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            ph = photos[i % len(photos)]
            y, x = rng.integers(0, ph.shape[0] - size), rng.integers(0, ph.shape[1] - size)
            a = ph[y:y + size, x:x + size].astype(np.float32); a[..., ci % 3] = a[..., ci % 3] * 0.5 + 127
            im = Image.fromarray(a.astype(np.uint8))
            if i % 3: im.save(root/c/f'{i}.jpg', quality=90)
            else: im.save(root/c/f'{i}.png')
    return root


@pytest.fixture
def photos(tmp_path): return photo_folder(tmp_path/'photos')


def batches(data, epochs=(0, 1)):
    tr, va = data.loaders(bs=8, device='cpu', seed=5)
    out = []
    for e in epochs:
        tr.set_epoch(e); out += [(xb, yb) for xb, yb in tr]
    return out + [(xb, yb) for xb, yb in va]


@pytest.mark.parametrize('cache_on', [False, True])
def test_tiny_budget_streams_the_same_data(cache, photos, capsys, cache_on):
    mem = D.get_data(photos, size=32, progress=False, cache=cache_on, memory_budget=1)
    assert mem.storage['mode'] == 'memory' and isinstance(mem.x_train, torch.Tensor)
    assert 'note' not in capsys.readouterr().err
    disk = D.get_data(photos, size=32, progress=False, cache=cache_on, memory_budget=1e-6)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'read from' in err[0] and 'memory budget of 1e-06 GB' in err[0], err
    assert disk.storage['mode'] == 'disk' and disk.storage['decoded_gb'] > disk.storage['budget_gb']
    assert isinstance(disk.x_train, ImageStore) and isinstance(disk.x_valid, ImageStore)
    assert disk.summary()['storage']['mode'] == 'disk'
    shape = (disk.channels, disk.size, len(disk.x_train))
    assert shape == (mem.channels, mem.size, len(mem.x_train)) == (3, (32, 32), 30)
    assert torch.equal(disk.x_train[:], mem.x_train) and torch.equal(disk.x_valid[:], mem.x_valid)
    assert torch.equal(disk.y_train, mem.y_train) and torch.equal(disk.y_valid, mem.y_valid)
    assert (disk.mean, disk.std) == (mem.mean, mem.std)
    for (xa, ya), (xb, yb) in zip(batches(mem), batches(disk), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert {k: v for k, v in disk.summary().items() if k != 'storage'} == {
        k: v for k, v in mem.summary().items() if k != 'storage'}
    if cache_on:   # one cache file, read in place by the streaming path: no second decode, no scratch file left
        assert [p.name.endswith('.safetensors') for p in (cache/'folders').iterdir()] == [True]
        assert disk.storage['file'] == str(next((cache/'folders').iterdir()))
    else: assert not (cache/'folders').exists() or not any((cache/'folders').iterdir())


def test_environment_sets_the_budget_and_a_bad_one_is_one_line(cache, photos, monkeypatch, capsys):
    monkeypatch.setenv('LEPTON_MEMORY_GB', '0')
    assert D.get_data(photos, size=16, progress=False).storage['mode'] == 'disk'
    monkeypatch.setenv('LEPTON_MEMORY_GB', 'plenty')
    with pytest.raises(D.LeptonError, match="LEPTON_MEMORY_GB must be a number of gigabytes, got 'plenty'"):
        D.get_data(photos, size=16, progress=False)
    with pytest.raises(D.LeptonError, match='0 or more'): D.get_data(photos, size=16, memory_budget=-2)


def test_damaged_stream_cache_is_rebuilt_with_one_line(cache, photos, capsys):
    first = D.get_data(photos, size=32, progress=False, memory_budget=0)
    x_train, x_valid = first.x_train[:], first.x_valid[:]   # (read now: the file is about to be damaged in place)
    (p,) = (cache/'folders').iterdir()
    size = p.stat().st_size
    p.write_bytes(p.read_bytes()[:size // 2])                          # damaged behind our back
    capsys.readouterr()
    again = D.get_data(photos, size=32, progress=False, memory_budget=0)
    damaged = [l for l in capsys.readouterr().err.splitlines() if 'is damaged' in l]
    assert len(damaged) == 1 and str(p) in damaged[0], damaged
    assert p.stat().st_size == size and torch.equal(again.x_train[:], x_train)
    p.write_bytes(b'\xff' * 8 + p.read_bytes()[8:])                    # a header length that makes no sense
    assert torch.equal(D.get_data(photos, size=32, progress=False, memory_budget=0).x_valid[:], x_valid)
    assert sum('is damaged' in l for l in capsys.readouterr().err.splitlines()) == 1


KILLER = '''
import sys, time
import lepton_nb.loaders as L
orig = L.ImageStore.__getitem__
def slow(self, key):   # the first chunk copied into the cache: stop there, as if killed mid-write
    if isinstance(key, slice): print('writing', flush=True); time.sleep(60)
    return orig(self, key)
L.ImageStore.__getitem__ = slow
import lepton_nb.data as D
D.get_data(sys.argv[1], size=32, progress=False, memory_budget=0)
'''

def test_stream_cache_survives_kill_mid_write(cache, photos):
    p = subprocess.Popen([sys.executable, '-c', KILLER, str(photos)], stdout=subprocess.PIPE, text=True,
                         env=os.environ.copy())
    try:
        assert p.stdout.readline().strip() == 'writing'
        names = [f.name for f in (cache/'folders').iterdir()]
        assert len(names) == 1 and names[0].endswith('.tmp'), names   # half-written, under its temporary name only
    finally:
        p.send_signal(signal.SIGKILL); p.wait()
    assert not list((cache/'folders').glob('*.safetensors'))          # never under the real name
    assert not list((cache/'folders').glob('.decoding.*'))            # the scratch file had no name left to leave
    data = D.get_data(photos, size=32, progress=False, memory_budget=0)   # the next run rebuilds
    assert len(list((cache/'folders').glob('*.safetensors'))) == 1
    ref = D.get_data(photos, size=32, progress=False, cache=False, memory_budget=1)
    assert torch.equal(data.x_train[:], ref.x_train)


def test_store_views_and_loader_shards(tmp_path):
    x = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8); y = torch.arange(40) % 4
    (tmp_path/'x.u8').write_bytes(x.numpy().tobytes())
    s = ImageStore(tmp_path/'x.u8', x.shape)
    keep = torch.arange(40) % 5 != 0
    assert torch.equal(s.subset(keep)[:], x[keep]) and len(s.subset(keep)) == 32
    a = TensorLoader(x, y, 6, shuffle=True, seed=1, device='cpu', rank=1, world_size=2, drop_last=True)
    b = TensorLoader(s, y, 6, shuffle=True, seed=1, device='cpu', rank=1, world_size=2, drop_last=True)
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True): assert torch.equal(xa, xb) and torch.equal(ya, yb)
    it = b.iter_from(0); next(it); it.close()                          # a loop left early leaves no thread waiting


PROBE = textwrap.dedent('''
    import sys
    import torch
    import lepton_nb.data as D
    def status(key):   # MB, from the kernel's own account of this process
        return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key + ':'))) // 1024
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # the peak (VmHWM) starts again from here
    base = status('VmRSS')
    d = D.get_data(sys.argv[1], size=224, progress=False, memory_budget=float(sys.argv[2]))
    for xb, yb in d.loaders(bs=32, device='cpu')[0]: pass
    print(d.storage['mode'], base, status('VmHWM'))
''')

@pytest.mark.skipif(not Path('/proc/self/clear_refs').exists(), reason='reads the peak from Linux /proc')
def test_peak_memory_is_bounded_when_streaming(cache, tmp_path):
    """1,500 images at 224x224 RGB, 226 MB decoded: streamed, the process's peak grows by less than that (measured
    157 MB: decoding threads, statistics chunks, a batch ahead); in memory by over twice that (measured 567 MB)."""
    root = photo_folder(tmp_path/'big', n_per_class=500, size=40)
    out = {}
    for budget in ('0', '8', '0', '8'):   # each mode twice, the lower peak kept: the allocator's arenas sometimes
        r = subprocess.run([sys.executable, '-c', PROBE, str(root), budget], capture_output=True, text=True,
                           timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})   # hold ~50 MB more (seen once)
        assert r.returncode == 0, r.stderr
        mode, base, peak = r.stdout.split(); out[mode] = min(out.get(mode, 1 << 40), int(peak) - int(base))
    decoded = 1500 * 3 * 224 * 224 // 2**20
    assert out['disk'] < 0.8 * decoded and out['memory'] > 2 * decoded, (out, decoded)
    assert 3 * out['disk'] < out['memory'], out


def test_early_stopping_on_disk_trains_as_in_memory(cache, photos, monkeypatch):
    "With --patience the held-out images are a view of the store (nothing read at once), and the run is the same."
    from lepton_nb.cnn import train_classifier
    read = []
    orig = ImageStore.__getitem__
    def counting(self, key):
        out = orig(self, key); read.append(len(out)); return out
    monkeypatch.setattr(ImageStore, '__getitem__', counting)
    runs = {}
    for budget in (1, 1e-6):
        data = D.get_data(photos, size=32, progress=False, cache=False, memory_budget=budget)
        learn, m = train_classifier(data, 'fast', epochs=2, bs=8, width=4, patience=1, progress=False, device='cpu')
        runs[data.storage['mode']] = (m['test_accuracy'], [float(p.sum()) for p in learn.model.parameters()])
    assert runs['disk'] == runs['memory']
    assert read and 27 not in read   # the 27 kept images (3 held out) are read a batch at a time, never at once
