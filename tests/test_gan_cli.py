"""`lepton gan` and `lepton gan sample` end to end: every artefact and JSON key, the sample grid's size,
one-line errors, and `--resume` after a SIGKILL. Tiny runs (300 real Fashion-MNIST images of 3 classes, width 8,
one thread): a few seconds each."""
import contextlib, io, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import assert_one_line_error, last_json, lepton
import lepton_nb.data as D
from lepton_nb.cli import main
from lepton_nb.cnn import export_image_folder

CLASSES = ['Trouser', 'Sneaker', 'Bag']
TINY = ['--epochs', '2', '--width', '8', '--batch-size', '32', '--n-eval', '60', '--seed', '1']
ARTEFACTS = ['checkpoint.pt', 'config.json', 'coverage.png', 'discriminator.safetensors', 'gan_args.json',
             'generator.safetensors', 'losses.png', 'metrics.json', 'progress.png', 'run_card.json', 'samples.png']

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    return {'LEPTON_CACHE': str(tmp_path_factory.mktemp('cache')), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}

@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    "train/ (3 x 100 images) and val/ (3 x 20) folders of real Fashion-MNIST PNGs."
    fm = D.load_fashion_mnist(cache=False)
    root = tmp_path_factory.mktemp('gan-data')
    export_image_folder(fm, root/'train', CLASSES, 100)
    export_image_folder(fm, root/'val', CLASSES, 20, split='valid')
    return root

@pytest.fixture(scope='module')
def run(folders, env, tmp_path_factory):
    "One finished tiny run: (its folder, the parsed last line of --json)."
    out = tmp_path_factory.mktemp('gan-run')/'run'
    r = lepton('gan', '--data', folders/'train', '--val', folders/'val', *TINY, '--out', out, '--json', env=env)
    assert r.returncode == 0, r.stderr
    return out, last_json(r.stdout)

def test_gan_writes_every_artefact(run, env):
    out, m = run
    assert sorted(p.name for p in out.iterdir()) == ARTEFACTS
    # the metric's classifier, cached whole under its key, readable as a plain folder would be (the cache may be shared)
    cached = [p for p in (Path(env['LEPTON_CACHE'])/'fid-classifier').iterdir()]
    umask = os.umask(0); os.umask(umask)
    assert len(cached) == 1 and (cached[0]/'fid.json').is_file() and cached[0].stat().st_mode & 0o777 == 0o777 & ~umask
    assert m == json.loads((out/'metrics.json').read_text())                      # --json prints metrics.json's object
    assert {'fid', 'fid_floor', 'classifier_score', 'class_coverage', 'epochs', 'train_seconds', 'device'} <= set(m)
    assert m['epochs'] == 2 and m['device'] == 'cpu' and m['fid'] > 0 and m['fid_floor'] >= 0
    assert 1 <= m['classifier_score'] <= 3 and sorted(m['class_coverage']) == sorted(CLASSES)
    assert abs(sum(m['class_coverage'].values()) - 1) < 1e-6 and len(m['history']) == 2
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['n_classes'] == 3 and cfg['classes'] == sorted(CLASSES) and cfg['width'] == 8
    for f in ('samples.png', 'losses.png', 'progress.png', 'coverage.png'): assert Image.open(out/f).size[0] > 100

def test_gan_sample_png(run, env, tmp_path):
    out, _ = run
    r = lepton('gan', 'sample', out, '--n', '7', '--out', tmp_path/'s.png', '--json', env=env)
    assert r.returncode == 0, r.stderr
    # 3 classes -> 3 columns, ceil(7/3) = 3 rows; 28 pixels + 2 of padding each, 2 more at the edge; enlarged twice
    assert Image.open(tmp_path/'s.png').size == (2 * (3 * 30 + 2), 2 * (3 * 30 + 2))
    assert last_json(r.stdout)['labels'] == ['Bag', 'Sneaker', 'Trouser'] * 2 + ['Bag']
    r = lepton('gan', 'sample', out, '--n', '5', '--class', 'Sneaker', '--scale', '1', '--out', tmp_path/'b.png',
               env=env)
    assert r.returncode == 0, r.stderr
    im = Image.open(tmp_path/'b.png')
    assert im.size == (5 * 30 + 2, 30 + 2) and im.mode == 'L'
    r = lepton('gan', 'sample', out, '--n', '5', '--class', 'sneaker', '--scale', '1', '--out', tmp_path/'c.png',
               env=env)
    assert r.returncode == 0, r.stderr
    # the same seed (and class, in any case): the same picture
    assert (tmp_path/'b.png').read_bytes() == (tmp_path/'c.png').read_bytes()
    # the default: 8 of each class, a column each; --json given before `sample` counts too: one document on stdout
    r = lepton('gan', '--json', 'sample', out, '--out', tmp_path/'d.png', env=env)
    assert r.returncode == 0 and 'in 8 rows of 3' in r.stderr, r.stderr
    assert json.loads(r.stdout)['n'] == 24 and Image.open(tmp_path/'d.png').size == (2 * (3 * 30 + 2), 2 * (8 * 30 + 2))

@pytest.mark.parametrize('args, msg', [
    (['gan', '--epochs', '0'], 'must be at least 1'),
    (['gan', '--batch-size', '0'], 'must be at least 1'),
    (['gan', '--time-budget', '-5'], 'positive number'),
    (['gan', '--threads', 'many'], "expected an integer, got 'many' (or auto)"),
    (['gan', '--device', 'tpu', '--epochs', '1'], 'unknown device'),
    (['gan', '--data', '/no/such/folder', '--epochs', '1'], 'no such folder'),
    (['gan', '--resume', '--out', 'nowhere'], 'nothing to resume'),
    (['gan', 'sample'], 'required'),
    (['gan', 'sample', 'nowhere', '--out', 'a.png'], 'not a GAN folder'),
    (['gan', 'sample', 'nowhere'], 'not a GAN folder'),        # without --out: the folder is named, not the output
    (['gan', 'sample', 'RUN', '--n', '0'], 'must be at least 1'),
    (['gan', 'sample', 'RUN', '--out', 'a.jpg'], 'must end in .png'),
    (['gan', 'sample', 'RUN', '--class', 'Hat', '--out', 'a.png'], 'unknown class'),
    (['gan', 'sample', 'RUN', '--n', '1000001', '--out', 'a.png'], 'at most 100000'),
    (['gan', 'sample', 'RUN', '--n', '100000', '--scale', '32', '--out', 'a.png'],
     'over 100 million: give a smaller --n or --scale'),
])
def test_gan_bad_args_are_one_line(run, args, msg, tmp_path, monkeypatch):
    "In this process (no start-up cost): a non-zero exit, one line on stderr, no traceback."
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main([str(run[0]) if a == 'RUN' else a for a in args])
        except SystemExit as e: rc = e.code
    assert rc == 2, err.getvalue()
    e = err.getvalue().strip()
    assert 'Traceback' not in e and len(e.splitlines()) == 1 and msg.lower() in e.lower(), e

def test_gan_single_class_is_one_clear_error(folders, env, tmp_path):
    (tmp_path/'one').mkdir(); os.symlink(folders/'train'/'Bag', tmp_path/'one'/'Bag')
    assert_one_line_error(lepton('gan', '--data', tmp_path/'one', '--epochs', '1', env=env), 'at least 2 classes')
    # unconditional, the one class is learnt; nothing is measured (no classifier of one class), the rest is written
    r = lepton('gan', '--data', tmp_path/'one', '--unconditional', '--epochs', '1', '--width', '8', '--threads', '1',
               '--out', tmp_path/'run', '--json', env=env)
    assert r.returncode == 0, r.stderr
    m = last_json(r.stdout)
    assert 'fid' not in m and m['classes'] == ['Bag'] and m['conditional'] is False
    assert 'note: one class: no FID' in r.stderr
    assert m['threads'] == 1 and json.loads((tmp_path/'run'/'gan_args.json').read_text())['threads'] == 1
    assert m['n_train'] == 100 and 'so all 100 images train' in r.stderr   # nothing held out: nothing is measured
    assert '\nafter 1 epoch,' in r.stderr and (tmp_path/'run'/'generator.safetensors').is_file()  # (--json: stderr)
    assert (tmp_path/'run'/'samples.png').is_file() and not (tmp_path/'run'/'coverage.png').exists()

def test_gan_ctrl_c_writes_a_checkpoint_and_exits_130(folders, env, tmp_path):
    out = tmp_path/'run'
    args = ['gan', '--data', folders/'train', '--val', folders/'val', '--epochs', '50', '--width', '8',
            '--n-eval', '60', '--out', out]
    p = subprocess.Popen([str(Path(sys.executable).parent/'lepton'), *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out/'checkpoint.pt').exists() and time.monotonic() < deadline and p.poll() is None: time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally: p.kill(); p.wait()
    assert p.returncode == 130, err
    assert 'interrupted' in err.strip().splitlines()[-1] and 'lepton gan --resume' in err and 'Traceback' not in err
    st = torch.load(out/'checkpoint.pt', map_location='cpu', weights_only=True)
    assert st['step'] >= 1 and not (out/'metrics.json').exists()
