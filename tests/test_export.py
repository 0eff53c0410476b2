"""`export_model` end to end: a run trained by `lepton train`, exported to ONNX and to a `torch.export` program, run by
onnxruntime and by `torch.export.load` (no lepton_nb code in either graph), agrees with `lepton predict` on every image
of a folder; bad input is one line and leaves the run as it was."""
import contextlib, hashlib, json, os, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import last_json, lepton
import lepton_nb.data as D
from lepton_nb.artifacts import export_model
from lepton_nb.core import LeptonError
from lepton_nb.data import load_image

CLASSES = ['Trouser', 'Pullover', 'Sneaker']
TINTS = [(1.0, 0.6, 0.3), (0.4, 0.8, 1.0), (0.9, 0.9, 0.9)]

def _rgb_folder(root:Path, fm, per_class:int) -> Path:
    "root/<class>/*.png: Fashion-MNIST images of three classes, tinted in colour, 28 x 28 RGB."
    for k, name in enumerate(CLASSES):
        (root/name).mkdir(parents=True)
        idx = torch.nonzero(fm.y_train == fm.classes.index(name))[:per_class, 0]
        for j, i in enumerate(idx):
            g = fm.x_train[i, 0].numpy().astype(np.float32)
            rgb = np.stack([g * TINTS[(k + j) % 3][c] for c in range(3)], -1).round().astype(np.uint8)
            Image.fromarray(rgb).save(root/name/f'{j:03d}.png')
    return root

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A finished `fast` run (test-time flips on) on 3 x 40 RGB images at 32 x 32, one epoch; its folder of images."
    root = tmp_path_factory.mktemp('export')
    fm = D.load_fashion_mnist(cache=False)
    imgs = _rgb_folder(root/'imgs', fm, 40)
    out = root/'run'
    r = lepton('train', '--data', imgs, '--epochs', '1', '--batch-size', '32', '--width', '8', '--size', '32',
               '--out', out, '--json', env={'LEPTON_CACHE': str(root/'cache')})
    assert r.returncode == 0, r.stderr
    return out, imgs

@pytest.fixture(scope='module')
def predicted(run):
    "What `lepton predict` says of every image of the folder: file -> (label, probability)."
    out, imgs = run
    r = lepton('predict', out, imgs, '--json', '--top-k', '3')
    assert r.returncode == 0, r.stderr
    preds = last_json(r.stdout)['predictions']
    assert len(preds) == 3 * 40
    return {p['file']: p for p in preds}

def _pixels(files, cfg) -> torch.Tensor:
    "The uint8 tensors `predict` makes of the files: N x C x size x size."
    return torch.stack([load_image(f, cfg['size'], cfg['channels']) for f in files])

def _snapshot(folder:Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}

def test_onnx_agrees_with_predict_on_every_image(run, predicted, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    out, imgs = run
    cfg = json.loads((out/'config.json').read_text())
    files = sorted(predicted)
    x = _pixels(files, cfg)
    want = [predicted[f]['label'] for f in files]
    for dtype in ('uint8', 'float32'):
        res = export_model(out, 'onnx', tmp_path/f'm-{dtype}.onnx', dtype=dtype)
        assert res['tta'] is True and res['classes'] == sorted(CLASSES) and (res['size'], res['channels']) == (32, 3)
        assert res['inputs'] == [{'name': 'pixels', 'dtype': dtype, 'shape': ['batch', 3, 32, 32], 'range': [0, 255]}]
        sess = ort.InferenceSession(res['path'], providers=['CPUExecutionProvider'])
        meta = sess.get_modelmeta().custom_metadata_map
        classes = json.loads(meta['classes'])
        assert classes == sorted(CLASSES)
        inp = sess.get_inputs()[0]
        assert inp.name == 'pixels' and inp.shape[1:] == [3, 32, 32] and not isinstance(inp.shape[0], int)
        xin = x.numpy().astype(dtype)
        p = sess.run(None, {'pixels': xin})[0]
        assert p.shape == (len(files), 3) and np.allclose(p.sum(1), 1, atol=1e-5)
        assert [classes[i] for i in p.argmax(1)] == want                       # top-1 of every image: predict's
        np.testing.assert_allclose(p.max(1), [predicted[f]['probability'] for f in files], atol=1e-4)
        for n in (1, 7):                                                         # any batch size, the same answers
            np.testing.assert_allclose(sess.run(None, {'pixels': xin[:n]})[0], p[:n], rtol=1e-5, atol=1e-6)

def test_pt2_agrees_with_predict(run, predicted, tmp_path):
    out, imgs = run
    cfg = json.loads((out/'config.json').read_text())
    files = sorted(predicted)
    x = _pixels(files, cfg)
    res = export_model(out, 'pt2', tmp_path/'m.pt2')
    extra = {'classes': ''}
    prog = torch.export.load(res['path'], extra_files=extra)
    classes = json.loads(extra['classes'])
    assert classes == sorted(CLASSES)
    m = prog.module()
    with torch.no_grad():
        p = m(x)
        for n in (1, 7): torch.testing.assert_close(m(x[:n]), p[:n], rtol=1e-5, atol=1e-6)
    assert [classes[i] for i in p.argmax(1)] == [predicted[f]['label'] for f in files]
    # the default place: RUN/model.pt2, beside the run's own files, which stay as they were
    before = _snapshot(out)
    res = export_model(out, 'pt2')
    assert res['path'] == str(out/'model.pt2') and (out/'model.pt2').stat().st_size == res['bytes']
    after = _snapshot(out); after.pop('model.pt2')
    assert after == before
    (out/'model.pt2').unlink()

def _fails(call, msg:str):
    with pytest.raises(LeptonError) as e: call()
    text = str(e.value)
    assert msg in text and '\n' not in text, text

def test_bad_input_is_one_line_and_nothing_is_lost(run, tmp_path, monkeypatch):
    out, _ = run
    before = _snapshot(out)
    blocker = tmp_path/'a-file'; blocker.write_text('x')
    _fails(lambda: export_model(out, 'tflite'), "unknown export format 'tflite': use onnx or pt2")
    _fails(lambda: export_model(tmp_path/'nowhere'), 'no such run folder')
    (tmp_path/'empty').mkdir()
    _fails(lambda: export_model(tmp_path/'empty'), 'not a model folder')
    (tmp_path/'gan').mkdir(); (tmp_path/'gan'/'gan_args.json').write_text('{}')
    _fails(lambda: export_model(tmp_path/'gan'), 'holds a run of lepton gan')
    _fails(lambda: export_model(out, 'onnx', tmp_path/'m.pt2'), "a onnx file's name ends in .onnx")
    _fails(lambda: export_model(out, 'pt2', tmp_path), 'ends in .pt2')
    (tmp_path/'d.onnx').mkdir()
    _fails(lambda: export_model(out, 'onnx', tmp_path/'d.onnx'), 'is a folder')
    _fails(lambda: export_model(out, 'onnx', blocker/'m.onnx'), 'cannot write there')       # a file in the way
    _fails(lambda: export_model(out, 'onnx', blocker/'deeper'/'m.onnx'), 'not a folder')
    _fails(lambda: export_model(out, 'onnx', dtype='int8'), "unknown input type 'int8'")
    if os.geteuid() != 0:   # (root writes anywhere)
        ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o555)
        _fails(lambda: export_model(out, 'onnx', ro/'m.onnx'), 'read-only')
    # a run that has not finished: an interrupted one (a checkpoint newer than its metrics), one still running
    half = tmp_path/'half'; half.mkdir()
    for f in out.iterdir():
        if f.suffix not in ('.onnx', '.pt2'): (half/f.name).write_bytes(f.read_bytes())
    (half/'checkpoint.pt').write_bytes(b'0'); os.utime(half/'metrics.json', (1, 1))
    _fails(lambda: export_model(half), 'the run has not finished')
    (half/'checkpoint.pt').unlink(); (half/'metrics.json').unlink()
    _fails(lambda: export_model(half), 'lepton train --resume')
    # no exporter installed: one line naming the pip command
    monkeypatch.setitem(sys.modules, 'onnxscript', None)
    _fails(lambda: export_model(out, 'onnx', tmp_path/'x.onnx'), 'pip install onnx onnxscript')
    # nothing written anywhere, the run as it was
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.rglob('*.onnx*')] == ['d.onnx'] and not list(tmp_path.rglob('*.pt2*'))
    assert not list(tmp_path.rglob('*.tmp'))

def test_a_write_that_fails_leaves_no_file(run, tmp_path, monkeypatch):
    "The write itself fails (a full disk): one line, no partial file, no temporary."
    import lepton_nb.artifacts as A
    out, _ = run
    def full(self, data): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(Path, 'write_bytes', full)
    _fails(lambda: A.export_model(out, 'pt2', tmp_path/'m.pt2'), 'cannot write the file (No space left on device)')
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# Mixed precision: bf16 only where native (the choice a run records), fp16 with a gradient scaler on other CUDA GPUs.
# No GPU here: the CUDA branch of `bf16_supported` is run with fake device properties, and the fp16 step on the CPU.

@pytest.mark.parametrize('gpu, native', [('A100', True), ('T4', False), ('V100', False), ('H100', True)])
def test_bf16_supported_counts_only_native_bf16_on_cuda(monkeypatch, gpu, native):
    import lepton_nb.learner as L
    cap = {'A100': (8, 0), 'T4': (7, 5), 'V100': (7, 0), 'H100': (9, 0)}[gpu]
    monkeypatch.setattr(L, 'get_device', lambda d: torch.device('cuda'))
    # today's torch: is_bf16_supported counts emulation unless asked not to (a T4 says True by default)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation or native)
    assert L.bf16_supported('cuda') is native
    # a torch without the argument: the compute capability decides (8.0 and later have bf16 units)
    def old(): return True
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', old)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d=None: cap)
    assert L.bf16_supported('cuda') is native
    assert L.amp_precision('cuda', L.bf16_supported('cuda')) == ('bf16' if native else 'fp16')

def test_the_fp16_scaler_state_travels_in_a_checkpoint(tmp_path):
    "A resumed fp16 run continues with the loss scale it had, whichever comes first: the checkpoint or `before_fit`."
    from torch import nn
    from lepton_nb.learner import Learner, MixedPrecisionCB
    from lepton_nb.resilience import load_checkpoint, save_checkpoint
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    def learner():
        torch.manual_seed(0)
        return Learner(nn.Linear(8, 3), [(x, y)] * 3, device='cpu', cbs=[MixedPrecisionCB(torch.float16, force=True)])
    a = learner(); a.fit(1)
    a.cb(MixedPrecisionCB).scaler.update(1024.0)
    save_checkpoint(a, tmp_path/'ck.pt')
    b = learner(); load_checkpoint(b, tmp_path/'ck.pt')        # before any fit: no scaler yet, the state waits
    b.fit(1)
    assert b.precision == 'fp16' and b.cb(MixedPrecisionCB).scaler.get_scale() == 1024.0
    c = learner(); c.fit(1); load_checkpoint(c, tmp_path/'ck.pt')   # after one: loaded at once
    assert c.cb(MixedPrecisionCB).scaler.get_scale() == 1024.0
    assert MixedPrecisionCB().state_dict() == {}   # nothing to resume where no scaler runs

def test_a_step_of_its_own_keeps_fp32_where_bf16_is_not_native(monkeypatch):
    "On a GPU without native bf16 (faked: the CPU taken for one), fp16 and a scaler only where the Learner's step runs."
    from torch import nn
    import lepton_nb.learner as L
    real = L.amp_precision
    monkeypatch.setattr(L, 'bf16_supported', lambda d: False)
    monkeypatch.setattr(L, 'amp_precision', lambda t, native, own_step=True: real('cuda', native, own_step))
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    class OwnStep(L.Callback):   # as the GAN's callback: two optimisers, its own backward passes
        def train_step(self):
            l = self.learn; l.loss = l.loss_func(l.model(l.xb), l.yb); l.loss.backward(); l.opt.step()
            l.opt.zero_grad()
    a = L.Learner(nn.Linear(8, 3), [(x, y)], device='cpu', cbs=[L.MixedPrecisionCB(), OwnStep()]); a.fit(1)
    assert a.precision == 'fp32' and a.autocast is contextlib.nullcontext and a.cb(L.MixedPrecisionCB).scaler is None
    b = L.Learner(nn.Linear(8, 3), [(x, y)], device='cpu', cbs=[L.MixedPrecisionCB()]); b.fit(1)
    mp = b.cb(L.MixedPrecisionCB)
    assert b.precision == 'fp16' and mp.scaler is not None and b._stepper is mp and b.preds.dtype == torch.float16
