"""Reliability and security as a suite: bad data, faults (kills, a full disk), untrusted files, reproducibility, bad
arguments, memory.

What other tests already prove is not repeated here; this file adds to it:
- test_data_cli.py: a corrupt JPEG, a text file, RGBA and 16-bit PNGs, an empty class folder, the cache killed
  mid-write, a truncated IDX file;
- test_train_cli.py: SIGKILL of `lepton train` mid-epoch then `--resume`; negative epochs, zero batch size, an unknown
  device, a missing path, a GPU asked for where there is none, a single class;
- the notebooks' inline tests: 05_data (IDX bad magic, a link from a class folder back to the root), 08_resilience
  (2 epochs straight == 1 + checkpoint + resume + 1, bitwise; foreign checkpoints refused; Ctrl-C and SIGTERM stop
  between two steps), 12a_gan_run (a GAN paused and resumed equals two epochs straight, bitwise), 10_cnn (a pickle as
  model.safetensors, tampered weights, an absurd size, a wrong type, another architecture).

Training runs here are small (a few hundred exported Fashion-MNIST images, width 8) and, but for the same-seed test
that also checks the default thread count, single-threaded (OMP_NUM_THREADS=1): on a shared 2-core machine two threads
per process wait on each other far more than they compute. The whole file takes about two minutes there.
"""
import contextlib, hashlib, io, json, os, pickle, queue, random, shutil, struct, subprocess, sys, threading, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save as st_save

from helpers import BIN, last_json, lepton, lepton_here
import lepton_nb.data as D
from lepton_nb.cli import main
from lepton_nb.artifacts import load_model, save_model
from lepton_nb.cnn import export_image_folder, fast_cnn, model_config, train_classifier
from lepton_nb.learner import Callback

CLASSES = ['Trouser', 'Sneaker', 'Bag']
ARGS = ['--epochs', '3', '--batch-size', '32', '--width', '8', '--seed', '1', '--checkpoint-every', '0.001', '--json']


# ---------------------------------------------------------------------------------------------------------------------
# Shared fixtures and helpers

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "The environment of every `lepton` child: a private cache shared by this module's runs, one thread."
    return {**os.environ, 'LEPTON_CACHE': str(tmp_path_factory.mktemp('cache')), 'OMP_NUM_THREADS': '1',
            'PYTHONUNBUFFERED': '1'}

@pytest.fixture(scope='module')
def fm():
    return D.load_fashion_mnist(cache=False)

@pytest.fixture(scope='module')
def small(fm, tmp_path_factory):
    "train/ (3 x 200 images) and val/ (3 x 60) folders of real Fashion-MNIST PNGs."
    root = tmp_path_factory.mktemp('small')
    export_image_folder(fm, root/'train', CLASSES, 200)
    export_image_folder(fm, root/'val', CLASSES, 60, split='valid')
    return root

@pytest.fixture
def one_thread():
    "Torch on one thread in this process for the test (far quicker on a shared 2-core machine), restored after."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def cli(*args) -> tuple[int, str, str]:
    "Run `lepton` in this process: (exit status, stdout, stderr). An exception escaping `main` fails the test."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()

def assert_clean_error(rc, err, contains, one_line=True):
    "A refusal: non-zero exit, no traceback, the message on the last line of stderr (and alone there if `one_line`)."
    assert rc not in (0, None), err
    assert 'Traceback' not in err, err
    lines = err.strip().splitlines()
    assert lines, 'nothing on stderr'
    if one_line: assert len(lines) == 1, err
    assert contains.lower() in lines[-1].lower(), err

def same_weights(a:Path, b:Path):
    "Assert two model.safetensors files hold identical tensors (bit for bit)."
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for k in ta: assert torch.equal(ta[k], tb[k]), f"tensor {k} differs"


# The `lepton` command with fault injection. It is lepton_nb.cli.main itself; the patches only report progress on
# stdout ("step N" after each training batch, "saved N" after each checkpoint's bytes are written, "artifacts" when
# the final files start) and, on the FAULT_AT-th checkpoint write, inject FAULT:
#   cut-write: the bytes are cut to half and the process parks (the test then kills it in the middle of that write);
#   disk-full: the temporary file is a link to /dev/full, so the real write fails with ENOSPC from the kernel.
FAULTY = r'''
import os, sys, time
print = lambda *a, _print=print, **k: _print(*a, **k, file=sys.__stdout__)   # past --json's redirect to stderr
import torch
import lepton_nb.cnn, lepton_nb.learner
fault, at = os.environ.get('FAULT', ''), int(os.environ.get('FAULT_AT', '0'))
real_save, n = torch.save, [0]
def save(obj, f, *a, **k):
    n[0] += 1
    if n[0] == at and fault == 'disk-full': os.unlink(f); os.symlink('/dev/full', f)
    real_save(obj, f, *a, **k)
    if n[0] == at and fault == 'cut-write':
        data = open(f, 'rb').read(); open(f, 'wb').write(data[:len(data) // 2])
        print(f'cut {f}', flush=True); time.sleep(600)
    print(f"saved {obj['step']}", flush=True)
torch.save = save
one_batch = lepton_nb.learner.Learner._one_batch
def reporting_batch(self):
    one_batch(self)
    if self.training: print(f'step {self.step}', flush=True)
lepton_nb.learner.Learner._one_batch = reporting_batch
write = lepton_nb.cnn.write_artifacts
def reporting_write(*a, **k): print('artifacts', flush=True); return write(*a, **k)
lepton_nb.cnn.write_artifacts = reporting_write
from lepton_nb.cli import main
sys.exit(main(sys.argv[1:]))
'''

_children = []

@pytest.fixture(autouse=True)
def _no_child_left():
    "Whatever happens in a test, no `lepton` child outlives it (a parked one would sleep for ten minutes)."
    yield
    while _children:
        c = _children.pop()
        if c.p.poll() is None: c.kill()
        c.err.close()

class Child:
    "`lepton` (through FAULTY) in a child process; its stdout lines arrive on a queue as they are printed."
    def __init__(self, args, env, cwd, fault='', at=0, code=FAULTY):
        _children.append(self)
        self.err = open(Path(cwd)/f'stderr-{time.monotonic_ns()}.txt', 'w+')
        self.p = subprocess.Popen([sys.executable, '-c', code, *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=self.err, text=True, cwd=cwd, env={**env, 'FAULT': fault, 'FAULT_AT': str(at)})
        self.q, self.lines = queue.Queue(), []
        threading.Thread(target=lambda: [self.q.put(l.rstrip('\n')) for l in self.p.stdout] + [self.q.put(None)],
                         daemon=True).start()
    def stderr(self):
        self.err.seek(0); return self.err.read()
    def wait_for(self, pred, timeout=240) -> str:
        "The first output line for which `pred` holds (fails if the process ends or the time runs out first)."
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try: line = self.q.get(timeout=left)
            except queue.Empty: break
            if line is None: break
            self.lines.append(line)
            if pred(line): return line
        self.kill()
        pytest.fail(f"awaited line never came (exit {self.p.returncode}); last lines {self.lines[-3:]}; "
                    f"{self.stderr()[-1500:]}")
    def kill(self):
        self.p.kill(); self.p.wait()
    def finish(self, timeout=300) -> int:
        "Wait for the end; returns the exit status (all output lines are then in `lines`)."
        rc = self.p.wait(timeout)
        while (line := self.q.get(timeout=30)) is not None: self.lines.append(line)
        return rc
    def steps(self): return [int(l.split()[1]) for l in self.lines if l.startswith('step ')]
    def saved(self): return [int(l.split()[1]) for l in self.lines if l.startswith('saved ')]

def step_at_least(t): return lambda l: l.startswith('step ') and int(l.split()[1]) >= t

def train_args(small, out):
    return ['train', '--data', small/'train', '--val', small/'val', '--out', out, *ARGS]

def load_ck(path:Path) -> dict:
    "A checkpoint, loaded as `lepton train --resume` loads it (no pickled code)."
    return torch.load(path, map_location='cpu', weights_only=True)

def refuse_damaged_checkpoints(command:str, cases:dict, ref_out:Path, tmp_path:Path):
    """Each damaged checkpoint in a copy of the reference run folder: `lepton COMMAND --resume` refuses it,
    writes no model."""
    args_file, model = (('gan_args.json', 'generator.safetensors') if command == 'gan' else
                        ('train_args.json', 'model.safetensors'))
    for name, (st, msg) in cases.items():
        run = tmp_path/name.replace(' ', '-'); run.mkdir()
        shutil.copy(ref_out/args_file, run/args_file)
        torch.save(st, run/'checkpoint.pt')
        rc, out, err = cli(command, '--resume', '--out', run, '--json')
        assert_clean_error(rc, err, msg, one_line=False)          # (the run's start line may come first)
        assert sum('error:' in l for l in err.splitlines()) == 1 and not (run/model).exists(), (name, err)

def tmp_files(folder:Path): return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp'))

@pytest.fixture(scope='module')
def reference(small, env, tmp_path_factory):
    "The uninterrupted run every faulted run is compared with."
    d = tmp_path_factory.mktemp('reference')
    c = Child(train_args(small, d/'run'), env, d)
    assert c.finish() == 0, c.stderr()
    return {'out': d/'run', 'metrics': json.loads(c.lines[-1]), 'steps': c.steps()[-1], 'saves': len(c.saved())}

def assert_matches_reference(c:Child, out:Path, reference):
    "A resumed run ended as the uninterrupted one: same metrics (within the issue's tolerance) and, here, same bits."
    m = json.loads(c.lines[-1])
    assert m['epochs'] == reference['metrics']['epochs'] == 3
    assert abs(m['test_accuracy'] - reference['metrics']['test_accuracy']) <= 0.003
    assert abs(m['f1_macro'] - reference['metrics']['f1_macro']) <= 0.003
    same_weights(out/'model.safetensors', reference['out']/'model.safetensors')
    assert load_model(out, device='cpu')[1]['classes'] == sorted(CLASSES)  # the saved model passes every check
    assert tmp_files(out) == []                                            # no temporary left behind by the kills


# ---------------------------------------------------------------------------------------------------------------------
# Bad data

def _awkward_files(d:Path) -> dict:
    "Write the issue's awkward files into `d`; returns {name: True if it must load, False if it must be skipped}."
    a = (np.arange(28 * 28).reshape(28, 28) * 7 % 251).astype(np.uint8)
    png = io.BytesIO(); Image.fromarray(a).save(png, 'PNG'); png = png.getvalue()
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (10, 200, 90)]
    e = np.zeros((10, 20), np.uint8); e[:, :10] = 255               # left half white; EXIF says: turn 90 degrees
    ex = Image.new('L', (1, 1)).getexif(); ex[0x0112] = 6
    Image.new('L', (10_000, 10_000), 128).save(d/'huge.png')         # 100 million pixels: ~120 kB on disk
    Image.new('L', (20_000, 12_000), 0).save(d/'bomb.png')           # 240 million: refused as a decompression bomb
    frames[0].save(d/'animated.gif', save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(d/'animated.png', save_all=True, append_images=frames[1:], duration=100)   # APNG
    Image.fromarray(a).convert('CMYK').save(d/'cmyk.jpg', quality=95)
    Image.fromarray(a.astype(np.uint16) * 257).save(d/'deep16.tif')   # 16-bit TIFF (the 16-bit PNG is tested elsewhere)
    Image.fromarray(e).save(d/'exif6.jpg', exif=ex, quality=100)
    (d/'png-named.jpg').write_bytes(png)                              # the name lies; the content decides
    (d/'zero.png').write_bytes(b'')
    (d/'truncated.png').write_bytes(png[:len(png) // 2])
    (d/'header-only.png').write_bytes(png[:20])
    (d/'notes.txt').write_text('not an image\n')
    os.symlink('loop-b.png', d/'loop-a.png'); os.symlink('loop-a.png', d/'loop-b.png')   # a symlink loop
    os.symlink('nowhere.png', d/'dangling.png')
    os.symlink('.', d/'self')                                         # a folder link to itself: listed, not followed
    (d/os.fsdecode(b'latin1-\xe9t\xe9.png')).write_bytes(b'GIF89a?')  # a name that is not UTF-8, and a bad file
    return {'huge.png': True, 'bomb.png': False, 'animated.gif': True, 'animated.png': True, 'cmyk.jpg': True,
            'deep16.tif': True, 'exif6.jpg': True, 'png-named.jpg': True, 'zero.png': False, 'truncated.png': False,
            'header-only.png': False, 'notes.txt': False, 'loop-a.png': False, 'loop-b.png': False,
            'dangling.png': False, 'self': False, os.fsdecode(b'latin1-\xe9t\xe9.png'): False}

@pytest.fixture(scope='module')
def zoo(fm, tmp_path_factory):
    "An image folder whose class names have spaces and non-ASCII letters, holding every awkward file of the issue."
    root = tmp_path_factory.mktemp('zoo')
    export_image_folder(fm, root, ['Ankle boot', 'Bag'], 12)
    (root/'Ankle boot').rename(root/'ankle boot 靴'); (root/'Bag').rename(root/'sac à main')
    expect = _awkward_files(root/'sac à main')
    return root, expect

def test_awkward_files_load_or_are_listed(zoo, env):
    root, expect = zoo
    # A UTF-8 locale whose stdout is strict (en_US.UTF-8 on a desktop): a file name that is not UTF-8 must still print.
    r = lepton('data', '--data', root, '--json', env={**env, 'PYTHONIOENCODING': 'utf-8'})
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    s = last_json(r.stdout)
    skipped = {Path(k['file']).name: k['reason'] for k in s['skipped']}
    assert sorted(skipped) == sorted(n for n, ok in expect.items() if not ok)
    assert s['train_size'] + s['valid_size'] == 24 + sum(expect.values())
    assert s['classes'] == ['ankle boot 靴', 'sac à main']
    assert 'too large' in skipped['bomb.png'] and 'unreadable' in skipped['loop-a.png']
    assert 'unreadable' in skipped['dangling.png'] and skipped['zero.png'] == 'an empty file (0 bytes)'
    assert 'truncated' in skipped['truncated.png'] and 'linked folder, not followed' in skipped['self']
    # the listing names them
    for name in ('bomb.png', 'loop-a.png', 'truncated.png', 'latin1-'): assert name in r.stdout

def test_awkward_files_decode_right(zoo):
    "Loading is not enough: the first frame, the EXIF orientation, the 16-bit and CMYK values are right."
    d = zoo[0]/'sac à main'
    a = (np.arange(28 * 28).reshape(28, 28) * 7 % 251).astype(np.uint8)
    assert torch.equal(D.load_image(d/'deep16.tif', size=None), torch.from_numpy(a)[None])      # scaled, not clipped
    assert (D.load_image(d/'cmyk.jpg', size=None).float() - torch.from_numpy(a).float()).abs().mean() < 8
    for f in ('animated.gif', 'animated.png'):
        assert torch.equal(D.load_image(d/f), torch.full((1, 28, 28), 10, dtype=torch.uint8))
    t = D.load_image(d/'exif6.jpg', size=None)
    assert t.shape == (1, 20, 10)                                  # turned upright: 10 wide, 20 high
    assert t[0, :9].float().mean() > 240 and t[0, 11:].float().mean() < 15   # the white half is now on top
    assert torch.equal(D.load_image(d/'huge.png'), torch.full((1, 28, 28), 128, dtype=torch.uint8))

def test_unicode_class_names_round_trip(zoo, cache, one_thread, tmp_path):
    "Names with spaces and non-ASCII letters survive training, config.json and prediction."
    root = zoo[0]
    rc, out, err = cli('train', '--data', root, '--epochs', '1', '--width', '8', '--batch-size', '8', '--out',
                       tmp_path/'run', '--json')
    assert rc == 0, err
    cfg = json.loads((tmp_path/'run'/'config.json').read_text(encoding='utf-8'))
    assert cfg['classes'] == ['ankle boot 靴', 'sac à main']
    rc, out, err = cli('predict', tmp_path/'run', root/'ankle boot 靴'/'0000.png', '--top-k', '2', '--json')
    assert rc == 0, err
    assert {t['label'] for t in last_json(out)['predictions'][0]['top_k']} == {'ankle boot 靴', 'sac à main'}

def test_class_with_only_bad_files_is_one_clear_error(cache, tmp_path):
    for c in ('a', 'b'): (tmp_path/c).mkdir()
    for i in range(3): Image.new('L', (8, 8), i).save(tmp_path/'a'/f'{i}.png')
    (tmp_path/'b'/'x.png').write_bytes(b''); os.symlink('nowhere', tmp_path/'b'/'y.png')
    assert_clean_error(*cli('data', '--data', tmp_path)[::2], "class 'b' has no readable images")

def _idx_variants(src:Path, d:Path) -> dict:
    "Copies of the Fashion-MNIST folder, each with one IDX file damaged: {name: (folder, expected message)}."
    import gzip
    def variant(name, file, edit):
        v = d/name; v.mkdir()
        for f in src.iterdir():
            if f.name.startswith(file):
                raw = f.read_bytes(); raw = gzip.decompress(raw) if raw[:2] == b'\x1f\x8b' else raw
                (v/f.name).write_bytes(gzip.compress(edit(raw), 1))
            else: os.symlink(f, v/f.name)
        return v
    labels, images = 't10k-labels', 't10k-images'
    return {
        'wrong magic': (variant('magic', labels, lambda r: b'\x1f\x00' + r[2:]), 'bad magic number'),
        'wrong type byte': (variant('type', images, lambda r: r[:2] + b'\x0d' + r[3:16]     # well-formed float32 images
                                    + np.frombuffer(r, np.uint8, offset=16).astype('>f4').tobytes()), 'unsigned bytes'),
        'signed labels': (variant('signed', labels, lambda r: r[:2] + b'\x09' + r[3:8] + b'\xff' * (len(r) - 8)),
                          'unsigned bytes'),
        'header longer than the file': (variant('rank', labels, lambda r: r[:3] + b'\x07' + r[4:]),
                                        'IDX data is truncated'),
        'labels of the wrong shape': (variant('shape', labels,
                                              lambda r: r[:3] + b'\x02' + r[4:8] + struct.pack('>I', 1) + r[8:]),
                                      'expected shape (10000,) for Fashion-MNIST, found (10000, 1)'),
        'a label out of range': (variant('label', labels, lambda r: r[:8] + b'\x0a' + r[9:]),
                                 'labels must be 0-9, found 10'),
        'size overflows 64 bits': (variant('overflow', images, lambda r: r[:4] + struct.pack('>3I', 2**31, 2**31, 4)),
                                   'IDX data'),
        'empty': (variant('empty', labels, lambda r: b''), 'not an IDX file'),
    }

@pytest.fixture(scope='module')
def idx_variants(tmp_path_factory):
    return _idx_variants(Path(D.find_fashion_mnist(download=False)['x_train']).parent, tmp_path_factory.mktemp('idx'))

@pytest.mark.parametrize('case', ['wrong magic', 'wrong type byte', 'signed labels', 'header longer than the file',
                                  'labels of the wrong shape', 'a label out of range', 'size overflows 64 bits',
                                  'empty'])
def test_damaged_idx_is_one_clear_error(idx_variants, case, cache):
    folder, msg = idx_variants[case]
    rc, out, err = cli('data', '--data', folder)
    assert_clean_error(rc, err, msg)
    assert 't10k' in err                                   # names the damaged file


# ---------------------------------------------------------------------------------------------------------------------
# Faults: SIGKILL at random points, in the middle of a checkpoint write, a full disk

def test_sigkill_at_random_points_then_resume(small, env, reference, tmp_path):
    """Killed three times during epochs and once while writing the final files; each --resume goes on; the end is the
    same. Meanwhile a reader loads checkpoint.pt again and again, racing the writer: every load finds a whole one."""
    seed = random.SystemRandom().randrange(10**6)   # not the global generator, which in-process runs seed
    rng = random.Random(seed)
    n = reference['steps']
    targets = sorted(rng.sample(range(2, n - 1), 3))
    out = tmp_path/'run'
    stop, loads, torn = threading.Event(), [], []
    def reader():
        while not stop.is_set():
            if (out/'checkpoint.pt').is_file():
                try: loads.append(load_ck(out/'checkpoint.pt')['step'])
                except Exception as e: torn.append(repr(e))
            time.sleep(0.005)
    watcher = threading.Thread(target=reader, daemon=True); watcher.start()
    try:
        for i, target in enumerate(targets + ['artifacts']):
            args = train_args(small, out) if i == 0 else ['train', '--resume', '--out', out, '--json']
            c = Child(args, env, tmp_path)
            c.wait_for(step_at_least(target) if target != 'artifacts' else (lambda l: l == 'artifacts'))
            c.kill()
            if i == 0: settings = (out/'train_args.json').read_text()
            st = load_ck(out/'checkpoint.pt')                 # whole and loadable, wherever the kill landed
            if target != 'artifacts': assert 1 <= st['step'] <= n and not (out/'metrics.json').exists(), (seed, target)
            else: assert st['step'] == n
    finally: stop.set(); watcher.join()
    assert not torn, (seed, torn[:3])                     # a reader never saw a checkpoint in part
    assert len(set(loads)) >= 3, loads                    # ... and it did read while the runs wrote
    c = Child(['train', '--resume', '--out', out, '--json'], env, tmp_path)
    assert c.finish() == 0, (seed, c.stderr())
    assert_matches_reference(c, out, reference)
    assert json.loads((out/'train_args.json').read_text()) == json.loads(settings)   # --resume keeps the run's settings
    with pytest.MonkeyPatch.context() as mp:                                            # fewer epochs than it has
        mp.setenv('LEPTON_CACHE', env['LEPTON_CACHE'])
        r = lepton_here('train', '--resume', '--out', out, '--epochs', '2')
    assert r.returncode == 0 and 'nothing to train up to 2 (ask for more epochs)' in r.stdout, r.stderr

def test_sigkill_during_checkpoint_write(small, env, reference, tmp_path):
    "Killed with half of a checkpoint on disk: the file under the real name is the previous, whole checkpoint."
    at = random.SystemRandom().randrange(3, reference['saves'] - 3)
    out = tmp_path/'run'
    c = Child(train_args(small, out), env, tmp_path, fault='cut-write', at=at)
    cut = c.wait_for(lambda l: l.startswith('cut '))
    c.kill()
    half = Path(cut.split(' ', 1)[1])
    assert half.parent == out and half.name.startswith('.checkpoint.pt.') and half.exists()   # the kill was mid-write
    with pytest.raises(Exception): load_ck(half)  # noqa: B017 (that half is unreadable; torch's error type varies)
    assert load_ck(out/'checkpoint.pt')['step'] == c.saved()[-1]   # the real name holds the last whole checkpoint
    c = Child(['train', '--resume', '--out', out, '--json'], env, tmp_path)
    assert c.finish() == 0, c.stderr()
    assert_matches_reference(c, out, reference)       # (also: the half-written temporary was cleared)

@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full to make the disk look full')
def test_disk_full_keeps_the_previous_checkpoint(small, env, reference, tmp_path):
    out = tmp_path/'run'
    c = Child(train_args(small, out), env, tmp_path, fault='disk-full', at=5)
    rc = c.finish()
    assert_clean_error(rc, c.stderr(), 'could not write the checkpoint', one_line=False)
    assert len(c.saved()) == 4
    assert load_ck(out/'checkpoint.pt')['step'] == c.saved()[-1]   # the previous checkpoint, intact
    assert tmp_files(out) == [] and not (out/'metrics.json').exists()
    c = Child(['train', '--resume', '--out', out, '--json'], env, tmp_path)   # space again: carry on
    assert c.finish() == 0, c.stderr()
    assert_matches_reference(c, out, reference)

# The GAN's faults: SIGKILL during an epoch and during a checkpoint write (the Learner's checkpoint, through the shared
# CheckpointCB: both nets, both optimisers, the averaged generator, the fixed noise, every RNG), then --resume; the end
# must be the uninterrupted run's, bit for bit (one thread). FAULTY's torch.save patch reports "saved N"; here gan_step
# reports "step N".
GAN_FAULTY = FAULTY.replace("import lepton_nb.cnn, lepton_nb.learner",
                            "import lepton_nb.cnn, lepton_nb.learner, lepton_nb.gan").replace(
    "from lepton_nb.cli import main", """gan_step = lepton_nb.gan.gan_step
n_steps = [0]
def reporting_gan_step(*a, **k):
    r = gan_step(*a, **k); n_steps[0] += 1; print(f'gan step {n_steps[0]}', flush=True); return r
lepton_nb.gan.gan_step = reporting_gan_step
from lepton_nb.cli import main""")
GAN_ARGS = ['--epochs', '2', '--batch-size', '32', '--width', '8', '--n-eval', '60', '--seed', '1',
            '--checkpoint-every', '0.001', '--json']

def gan_args(small, out): return ['gan', '--data', small/'train', '--val', small/'val', '--out', out, *GAN_ARGS]

@pytest.fixture(scope='module')
def gan_reference(small, env, tmp_path_factory):
    "The uninterrupted GAN run the faulted ones are compared with."
    d = tmp_path_factory.mktemp('gan-reference')
    c = Child(gan_args(small, d/'run'), env, d, code=GAN_FAULTY)
    assert c.finish() == 0, c.stderr()
    return {'out': d/'run', 'metrics': json.loads(c.lines[-1]), 'saves': len(c.saved())}

def assert_gan_matches_reference(c:Child, out:Path, ref):
    m, r = json.loads(c.lines[-1]), ref['metrics']
    # 600 images, batches of 32
    assert m['epochs'] == r['epochs'] == 2 and m['steps'] == r['steps'] == 36 and m['n_train'] == r['n_train']
    for k in ('fid', 'fid_floor', 'classifier_score'): assert m[k] == r[k], k
    same_weights(out/'generator.safetensors', ref['out']/'generator.safetensors')
    same_weights(out/'discriminator.safetensors', ref['out']/'discriminator.safetensors')
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref['out'].iterdir())   # every file written
    assert (out/'samples.png').exists() and tmp_files(out) == []

def test_gan_sigkill_during_an_epoch_then_resume(small, env, gan_reference, tmp_path):
    target = random.SystemRandom().randrange(3, 34)
    out = tmp_path/'run'
    c = Child(gan_args(small, out), env, tmp_path, code=GAN_FAULTY)
    c.wait_for(lambda l: l.startswith('gan step ') and int(l.split()[2]) >= target)
    c.kill()
    st = load_ck(out/'checkpoint.pt')
    gan = st['callbacks']['GANCB']                      # the Learner's checkpoint, with the GAN step's state
    assert 1 <= st['step'] <= 36 and 'G_ema' in gan and 'd' in st['opt'] and not (out/'metrics.json').exists(), target
    c = Child(['gan', '--resume', '--out', out, '--json'], env, tmp_path, code=GAN_FAULTY)
    assert c.finish() == 0, (target, c.stderr())
    assert_gan_matches_reference(c, out, gan_reference)

def test_gan_sigkill_during_checkpoint_write(small, env, gan_reference, tmp_path):
    at = random.SystemRandom().randrange(3, gan_reference['saves'] - 3)
    out = tmp_path/'run'
    c = Child(gan_args(small, out), env, tmp_path, fault='cut-write', at=at, code=GAN_FAULTY)
    cut = c.wait_for(lambda l: l.startswith('cut '))
    c.kill()
    half = Path(cut.split(' ', 1)[1])
    assert half.parent == out and half.name.startswith('.checkpoint.pt.') and half.exists()   # killed mid-write
    with pytest.raises(Exception): load_ck(half)  # noqa: B017 (that half is unreadable; torch's error type varies)
    assert load_ck(out/'checkpoint.pt')['step'] == c.saved()[-1]     # the real name holds the last whole checkpoint
    c = Child(['gan', '--resume', '--out', out, '--json'], env, tmp_path, code=GAN_FAULTY)
    assert c.finish() == 0, c.stderr()
    assert_gan_matches_reference(c, out, gan_reference)


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full to make the disk look full')
def test_gan_disk_full_keeps_the_previous_checkpoint(small, env, gan_reference, tmp_path):
    "A full disk while the GAN checkpoints: one clear line, the previous checkpoint intact, and --resume carries on."
    out = tmp_path/'run'
    c = Child(gan_args(small, out), env, tmp_path, fault='disk-full', at=5, code=GAN_FAULTY)
    rc = c.finish()
    assert_clean_error(rc, c.stderr(), 'could not write the checkpoint', one_line=False)
    assert load_ck(out/'checkpoint.pt')['step'] == c.saved()[-1] and tmp_files(out) == []
    c = Child(['gan', '--resume', '--out', out, '--json'], env, tmp_path, code=GAN_FAULTY)
    assert c.finish() == 0, c.stderr()
    assert_gan_matches_reference(c, out, gan_reference)

def test_gan_damaged_checkpoint_is_one_clear_error(small, env, gan_reference, tmp_path, monkeypatch, one_thread):
    "A GAN checkpoint that unpickles safely but lacks or garbles a field: refused in one line, not a KeyError."
    monkeypatch.setenv('LEPTON_CACHE', env['LEPTON_CACHE'])      # the reference run's FID classifier: no retraining
    good = load_ck(gan_reference['out']/'checkpoint.pt')
    def gan(**kw): return {**good, 'callbacks': {**good['callbacks'], 'GANCB': kw}}   # the GAN step's part, replaced
    g = good['callbacks']['GANCB']
    cases = {'no fixed noise': (gan(**{k: v for k, v in g.items() if k != 'z_fixed'}),
                                'damaged checkpoint (missing or malformed: z_fixed)'),
             'epoch as text': ({**good, 'epoch': 'two'}, 'malformed: epoch'),
             'log not a tensor': (gan(**{**g, 'log': [1, 2]}), 'malformed: log'),
             'another GAN': (gan(**{**g, 'arch': {**g['arch'], 'loss': 'hinge'}}), 'the checkpoint is of another GAN'),
             'optimiser garbled': ({**good, 'opt': {'g': good['opt']['g']}}, 'does not fit this model or optimiser'),
             'rng garbled': ({**good, 'rng': {'python': 1}}, 'damaged checkpoint (callback or generator states')}
    refuse_damaged_checkpoints('gan', cases, gan_reference['out'], tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Untrusted files

@pytest.fixture
def model_dir(tmp_path):
    "A genuine saved model (untrained: loading is what is tested) and a picture to predict."
    x = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    data = D.ImageData(x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1]), ['a', 'b'], mean=(0.5,),
                       std=(0.25,))
    save_model(fast_cnn(2, width=8), model_config('fast', data, width=8), tmp_path/'ok')
    Image.new('L', (28, 28), 99).save(tmp_path/'img.png')
    return tmp_path/'ok'

def variant(model_dir:Path, name:str, weights:bytes|None=None, edit=None, raw_config:str|bytes|None=None) -> Path:
    "A copy of `model_dir` with other weights (its config's SHA-256 updated to match: the attacker controls both)."
    v = model_dir.parent/name; v.mkdir()
    w = weights if weights is not None else (model_dir/'model.safetensors').read_bytes()
    (v/'model.safetensors').write_bytes(w)
    cfg = {**json.loads((model_dir/'config.json').read_text()), 'weights_sha256': hashlib.sha256(w).hexdigest()}
    if edit: edit(cfg)
    raw = raw_config if raw_config is not None else json.dumps(cfg)
    (v/'config.json').write_bytes(raw.encode() if isinstance(raw, str) else raw)
    return v

class Payload:
    "Unpickling this creates the file `marker`: proof that a loader ran code from the file."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, 'w'))

def test_pickle_payloads_never_run(model_dir, small, cache, tmp_path):
    marker = tmp_path/'payload-ran'
    evil = {'0.0.weight': Payload(marker), 'version': 1}
    zipped = io.BytesIO(); torch.save(evil, zipped)
    for name, blob in (('raw-pickle', pickle.dumps(evil)), ('torch-zip', zipped.getvalue())):
        v = variant(model_dir, name, weights=blob)
        assert_clean_error(*cli('predict', v, tmp_path/'img.png')[::2], 'not a readable safetensors')
        assert_clean_error(*cli('evaluate', v, '--data', small/'val')[::2], 'not a readable safetensors')
    # the same payload as the checkpoint of a run folder that `lepton train --resume` is pointed at
    run = tmp_path/'run'; run.mkdir()
    (run/'train_args.json').write_text(json.dumps({'data': str(small/'train'), 'val': str(small/'val'), 'width': 8,
                                                   'epochs': 1}))
    (run/'checkpoint.pt').write_bytes(zipped.getvalue())
    assert_clean_error(*cli('train', '--resume', '--out', run, '--json')[::2], 'not a readable lepton_nb checkpoint',
                       one_line=False)
    assert not marker.exists(), 'code inside a downloaded file ran'

def _st_edit(model_dir, f) -> bytes:
    sd = load_file(model_dir/'model.safetensors'); f(sd)
    return st_save(sd, metadata={'format': 'lepton_nb.classifier'})

def _counter(sd:dict) -> str:   # the first batch norm's step counter (an integer tensor), wherever the layout puts it
    return next(k for k in sd if k.endswith('num_batches_tracked'))

def _raw_st(header:dict, data:bytes=b'') -> bytes:
    h = json.dumps(header).encode(); return struct.pack('<Q', len(h)) + h + data

WEIGHT_CASES = {
    'wrong shape': (lambda m: _st_edit(m, lambda sd: sd.update({'0.0.weight': torch.zeros(8, 1, 5, 5)})),
                    'has shape (8, 1, 5, 5)'),
    'wrong dtype': (lambda m: _st_edit(m, lambda sd: sd.update({'0.0.weight': sd['0.0.weight'].double()})),
                    'has dtype torch.float64'),
    'float counter': (lambda m: _st_edit(m, lambda sd: sd.update({_counter(sd): torch.zeros(())})),
                      'has dtype torch.float32'),
    'extra tensor': (lambda m: _st_edit(m, lambda sd: sd.update({'hook': torch.zeros(1)})), 'unexpected'),
    'absurd header length': (lambda m: struct.pack('<Q', 2**62) + b'{}', 'not a readable safetensors'),
    'offsets past the end': (lambda m: _raw_st({'0.0.weight': {'dtype': 'F32', 'shape': [8, 1, 3, 3],
                                                               'data_offsets': [0, 10**12]}}),
                             'not a readable safetensors'),
    'absurd shape': (lambda m: _raw_st({'0.0.weight': {'dtype': 'F32', 'shape': [2**40, 2**40],
                                                       'data_offsets': [0, 0]}}),
                     'not a readable safetensors'),
}

@pytest.mark.parametrize('case', list(WEIGHT_CASES))
def test_bad_safetensors_refused(model_dir, case):
    make, msg = WEIGHT_CASES[case]
    v = variant(model_dir, 'v', weights=make(model_dir))
    assert_clean_error(*cli('predict', v, model_dir.parent/'img.png')[::2], msg)

CONFIG_CASES = {
    'nested 100,000 deep': (dict(raw_config='[' * 100_000 + ']' * 100_000), 'not valid JSON'),
    'a 5,000-digit number': (dict(raw_config='{"size": ' + '9' * 5000 + '}'), 'not valid JSON'),
    'not UTF-8': (dict(raw_config=b'{"arch": "\xff\xfe"}'), 'not valid JSON'),
    'a list, not an object': (dict(raw_config='[]'), 'expected a JSON object'),
    'NaN mean': (dict(edit=lambda c: c.update(mean=[float('nan')])), 'finite'),
    'bool for an int': (dict(edit=lambda c: c.update(width=True)), "'width' must be int"),
    'float for an int': (dict(edit=lambda c: c.update(size=28.0)), "'size' must be int"),
    'classes as a string': (dict(edit=lambda c: c.update(classes='ab')), "'classes' must be list"),
    'absurd n_classes': (dict(edit=lambda c: c.update(n_classes=10**12)), 'n_classes must be'),
    'absurd hidden size': (dict(edit=lambda c: c.update(hidden=10**9)), 'hidden 1..8192'),
    'negative width': (dict(edit=lambda c: c.update(width=-8)), 'width must be'),
    'a vanishing std': (dict(edit=lambda c: c.update(std=[1e-300] * len(c['std']))), 'std must be'),
    'a huge mean': (dict(edit=lambda c: c.update(mean=[1e308] * len(c['mean']))), 'mean -10..10'),
    'two classes of one name': (dict(edit=lambda c: c.update(classes=[c['classes'][0]] * len(c['classes']))),
                                'distinct'),
    'sizes past the weights file': (dict(edit=lambda c: c.update(size=512, width=512, hidden=8192)),
                                    'model.safetensors'),
}

@pytest.mark.parametrize('case', list(CONFIG_CASES))
def test_bad_config_refused(model_dir, case):
    kw, msg = CONFIG_CASES[case]
    v = variant(model_dir, 'v', **kw)
    assert_clean_error(*cli('predict', v, model_dir.parent/'img.png')[::2], msg)

def test_swapped_weights_of_the_same_shape_refused(model_dir):
    "Weights of another model that fit this architecture exactly: only the SHA-256 in config.json tells them apart."
    v = variant(model_dir, 'v')
    (v/'model.safetensors').write_bytes(_st_edit(model_dir, lambda sd: sd.update({'0.0.weight': -sd['0.0.weight']})))
    assert_clean_error(*cli('predict', v, model_dir.parent/'img.png')[::2], 'does not match the SHA-256')

def test_config_that_is_a_folder(model_dir):
    v = variant(model_dir, 'v'); (v/'config.json').unlink(); (v/'config.json').mkdir()
    assert_clean_error(*cli('predict', v, model_dir.parent/'img.png')[::2], 'config.json: unreadable')

def test_damaged_checkpoint_is_one_clear_error(small, reference, cache, tmp_path):
    "A checkpoint that unpickles safely but lacks or garbles a field: refused in one line, not a KeyError."
    good = load_ck(reference['out']/'checkpoint.pt')
    cases = {'no rng': ({k: v for k, v in good.items() if k != 'rng'},
                        'damaged checkpoint (missing or malformed: rng)'),
             'epoch as text': ({**good, 'epoch': 'two'}, 'malformed: epoch'),
             'history not a list': ({**good, 'history': 5}, 'malformed: history'),
             'optimiser garbled': ({**good, 'opt': {'state': {}, 'param_groups': 'x'}},
                                   'does not fit this model or optimiser'),
             'rng garbled': ({**good, 'rng': {'python': 1}}, 'damaged checkpoint (callback or generator states')}
    refuse_damaged_checkpoints('train', cases, reference['out'], tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Reproducibility

def test_same_seed_same_bits_on_cpu(small, env, reference, tmp_path):
    ("Two runs with the same seed give the same weights bit for bit, with the default thread count too; another seed "
     "does not.")
    base = ['train', '--data', small/'train', '--val', small/'val', '--epochs', '1', '--batch-size', '64',
            '--width', '8']
    threads = {k: v for k, v in env.items() if k != 'OMP_NUM_THREADS'}          # torch's default: one per core
    for name in ('a', 'b'):
        r = lepton(*base, '--seed', '5', '--out', tmp_path/name, env=threads, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    same_weights(tmp_path/'a'/'model.safetensors', tmp_path/'b'/'model.safetensors')
    assert (tmp_path/'a'/'model.safetensors').read_bytes() == (tmp_path/'b'/'model.safetensors').read_bytes()
    r = lepton(*base, '--seed', '6', '--out', tmp_path/'c', env=env, cwd=tmp_path)       # (one thread: quicker)
    assert r.returncode == 0, r.stderr
    a, c = load_file(tmp_path/'a'/'model.safetensors'), load_file(tmp_path/'c'/'model.safetensors')
    assert not torch.equal(a['0.0.weight'], c['0.0.weight'])                 # the seed matters: the test can fail


# ---------------------------------------------------------------------------------------------------------------------
# Bad arguments (those of the issue are in test_train_cli.py; these are the rest)

@pytest.fixture
def trained(small, cache, one_thread, tmp_path):
    "A model trained for one epoch on `small`, in this process."
    rc, out, err = cli('train', '--data', small/'train', '--val', small/'val', '--epochs', '1', '--width', '8', '--out',
                       tmp_path/'m', '--json')
    assert rc == 0, err
    return tmp_path/'m'

def test_bad_prediction_arguments(trained, small, tmp_path):
    (tmp_path/'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    good = small/'val'/'Bag'/'0000.png'
    # a typo
    assert_clean_error(*cli('predict', trained, good, tmp_path/'missing.png')[::2], 'missing.png: file not found')
    assert_clean_error(*cli('predict', trained, tmp_path/'broken.png')[::2], 'broken.png')  # the one file: which it was
    rc, out, err = cli('predict', trained, good, tmp_path/'broken.png', '--json')            # one of several: listed
    assert rc == 0 and f"skipped {tmp_path/'broken.png'}: " in err and len(last_json(out)['predictions']) == 1, err
    (tmp_path/'empty').mkdir()
    assert_clean_error(*cli('predict', trained, tmp_path/'empty')[::2], 'a folder with no files in it')
    assert_clean_error(*cli('predict', trained, good, '--top-k', '0')[::2], 'at least 1')
    assert_clean_error(*cli('predict', small/'val', good)[::2], 'not a model folder')
    assert_clean_error(*cli('evaluate', trained, '--device', 'tpu')[::2], 'unknown device')
    assert_clean_error(*cli('evaluate', trained, '--data', tmp_path/'nowhere')[::2], 'no such folder')

def test_out_that_is_a_file(small, cache, tmp_path):
    (tmp_path/'taken').write_text('a file, not a folder')
    assert_clean_error(*cli('train', '--data', small/'train', '--epochs', '1', '--out', tmp_path/'taken')[::2],
                       'not a folder')

@pytest.mark.parametrize('args,msg', [
    (['--width', '600'], 'argument --width: must be at most 512'),
    (['--size', '4'], 'must be at least 8'),
    (['--lr', '1e308'], 'learning rate'),
    (['--valid-pct', '1.5'], 'must be between 0 and 1'),
])
def test_bad_training_settings_fail_before_training(small, cache, tmp_path, args, msg):
    rc, out, err = cli('train', '--data', small/'train', '--epochs', '1', '--out', tmp_path/'run', *args)
    assert_clean_error(rc, err, msg, one_line=False)
    assert not (tmp_path/'run').exists()      # refused before any training: a run that started keeps its folder


# ---------------------------------------------------------------------------------------------------------------------
# Resources

def test_full_data_training_peak_rss_under_3gb(env, tmp_path):
    ("`lepton train` on all 70,000 Fashion-MNIST images (first run: decode the IDX files, write the cache), measured "
     "from outside.")
    with open(tmp_path/'out.txt', 'w') as o, open(tmp_path/'err.txt', 'w') as e:
        p = subprocess.Popen([str(BIN/'lepton'), 'train', '--time-budget', '4', '--out', tmp_path/'run', '--json'],
                             stdout=o, stderr=e, cwd=tmp_path, env=env)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, (tmp_path/'err.txt').read_text()
    m = last_json((tmp_path/'out.txt').read_text())
    assert (m['n_train'], m['n_test']) == (60000, 10000) and m['test_accuracy'] > 0.3   # it trained (chance: 0.1)
    peak_gb = usage.ru_maxrss * 1024 / 1e9                    # ru_maxrss is in KiB on Linux
    print(f"peak RSS of a full-data lepton train: {peak_gb:.2f} GB")
    assert peak_gb < 3.0

def test_loader_holds_one_decoded_copy(fm, one_thread):
    "The loader serves batches from the decoded tensor itself: no copy of the data set, whole or per epoch."
    from torch.profiler import ProfilerActivity, profile
    data = D.ImageData(fm.x_train[:6000].clone(), fm.y_train[:6000].clone(), fm.x_valid[:1000].clone(),
                       fm.y_valid[:1000].clone(), fm.classes, mean=fm.mean, std=fm.std)
    seen = []
    class SameStorage(Callback):
        def _check(self):
            for dl, x in ((self.learn.train_dl, data.x_train), (self.learn.valid_dl, data.x_valid)):
                seen.append(dl.x.untyped_storage().data_ptr() == x.untyped_storage().data_ptr())
        before_fit = after_epoch = _check
    train_classifier(data, 'fast', epochs=1, bs=500, width=4, device='cpu', progress=False, cbs=[SameStorage()],
                     amp=False)
    assert seen and all(seen)
    # the largest single allocation over two epochs of batches is about one float batch, not the data set
    dl = D.TensorLoader(fm.x_train, fm.y_train, 256, shuffle=True, device='cpu', mean=fm.mean, std=fm.std)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for e in range(2):
            dl.set_epoch(e)
            for _ in dl: pass
    biggest = max(ev.self_cpu_memory_usage for ev in prof.events())
    assert 0 < biggest <= 2 * 256 * 28 * 28 * 4 < fm.x_train.nbytes / 10, biggest
