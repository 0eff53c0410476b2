"`lepton data` end to end, image folders with bad files, and the cache surviving a kill mid-write."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_one_line_error, last_json, lepton, lepton_here
import lepton_nb.data as D
from lepton_nb.cli import main
from lepton_nb.core import LeptonError


def test_fashion_mnist_summary(cache):
    r = lepton('data', '--json')
    assert r.returncode == 0, r.stderr
    s = last_json(r.stdout)
    assert (s['train_size'], s['valid_size'], len(s['classes'])) == (60000, 10000, 10)
    assert s['classes'][0] == 'T-shirt/top' and s['skipped'] == []
    assert abs(s['mean'][0] - 0.286) < 1e-3 and abs(s['std'][0] - 0.353) < 1e-3
    assert '60000' in r.stdout and 'T-shirt/top' in r.stdout
    assert (cache/'fashion-mnist.safetensors').is_file()


def make_folder(root: Path):
    "Two classes of real Fashion-MNIST images plus the four awkward files of the issue."
    fm = D.load_fashion_mnist(cache=False)
    for ci, name in ((0, 'tshirt'), (1, 'trouser')):
        d = root/name; d.mkdir(parents=True)
        for i, j in enumerate(torch.nonzero(fm.y_train == ci)[:10, 0].tolist()):
            Image.fromarray(fm.x_train[j, 0].numpy()).save(d/f'{i}.png')
    a = fm.x_train[0, 0].numpy()
    Image.fromarray(np.dstack([a, a, a, np.full_like(a, 255)]), 'RGBA').save(root/'tshirt'/'rgba.png')
    Image.fromarray(a.astype(np.uint16) * 257).save(root/'trouser'/'deep16.png')
    Image.fromarray(a).convert('RGB').save(root/'_ok.jpg', quality=95)
    raw = (root/'_ok.jpg').read_bytes(); (root/'_ok.jpg').unlink()
    (root/'tshirt'/'corrupt.jpg').write_bytes(raw[:len(raw)//2])
    (root/'trouser'/'text.png').write_text('not an image at all\n')
    return fm


def test_folder_with_bad_files(cache, tmp_path):
    make_folder(tmp_path/'imgs')
    r = lepton('data', '--data', tmp_path/'imgs', '--json')
    assert r.returncode == 0, r.stderr
    s = last_json(r.stdout)
    assert sorted(Path(k['file']).name for k in s['skipped']) == ['corrupt.jpg', 'text.png']
    assert s['train_size'] + s['valid_size'] == 22          # 20 images + the RGBA and the 16-bit PNG
    assert s['classes'] == ['trouser', 'tshirt'] and s['channels'] == 1
    assert 'corrupt.jpg' in r.stdout and 'text.png' in r.stdout


def test_unwritable_cache_is_a_one_line_warning(cache, tmp_path):
    """A cache that cannot be written does not stop the work: the data loads, and each warning is one line,
    not Python's two."""
    make_folder(tmp_path/'imgs')
    cache.write_text('a file where the cache folder would be\n')
    r = lepton('data', '--data', tmp_path/'imgs', '--json')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    assert last_json(r.stdout)['train_size'] + last_json(r.stdout)['valid_size'] == 22
    lines = r.stderr.strip().splitlines()   # (with --json the summary is on standard error too, after the warnings)
    assert not any('Warning' in l or 'warn(' in l for l in lines), r.stderr   # no category or source line (Python's)
    warned = [l.split(str(cache))[0] for l in lines if 'warning' in l]
    assert warned == ['lepton data: warning: could not write the cache ',
                      'lepton data: warning: could not write the split '], r.stderr
    assert lines[2].startswith('data: '), r.stderr


def test_data_folder_whose_name_is_not_utf8(cache, tmp_path):
    """Folders named in another encoding (bytes that are not UTF-8): the data folder loads and caches;
    a class trains and plots."""
    root = tmp_path/os.fsdecode(b'fotos-\xe9t\xe9')
    make_folder(root)
    for _ in range(2):                                       # the second run reads the cache written by the first
        r = lepton('data', '--data', root, '--json')
        assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
        assert last_json(r.stdout)['train_size'] + last_json(r.stdout)['valid_size'] == 22
    # a class folder so named: its label is printable (\\xe9), and the run writes every file, plots included
    (root/'tshirt').rename(root/os.fsdecode(b'chemise-\xe9'))
    r = lepton('train', '--data', root, '--epochs', '1', '--width', '8', '--batch-size', '8', '--out', tmp_path/'run',
               '--json')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    files = ('confusion.png', 'predictions.png', 'metrics.json', 'model.safetensors')
    assert all((tmp_path/'run'/f).is_file() for f in files)
    cfg = json.loads((tmp_path/'run'/'config.json').read_text(encoding='utf-8'))
    assert cfg['classes'] == ['chemise-\\xe9', 'trouser']


def test_folder_with_separate_val(cache, tmp_path):
    make_folder(tmp_path/'train'); make_folder(tmp_path/'val')
    r = lepton('data', '--data', tmp_path/'train', '--val', tmp_path/'val', '--json')
    assert r.returncode == 0, r.stderr
    s = last_json(r.stdout)
    assert (s['train_size'], s['valid_size']) == (22, 22)
    assert len(s['skipped']) == 4
    assert len(s['report']['duplicates_across_classes']) == 0 and len(s['report']['duplicate_groups']) > 0


def test_lepton_data_that_holds_nothing_is_named(cache, tmp_path):
    "$LEPTON_DATA set to a folder without the IDX files: one note says it was passed over, and the data still loads."
    r = lepton('data', '--json', env={'LEPTON_DATA': str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert f'$LEPTON_DATA ({tmp_path}) holds no Fashion-MNIST IDX files' in r.stderr
    assert last_json(r.stdout)['train_size'] == 60000


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(a).save(tmp_path/'d.png')
    t = D.load_image(tmp_path/'d.png', size=None, channels=1)
    assert t.dtype == torch.uint8 and int(t.max()) == round(63000/65535*255)


@pytest.mark.parametrize('args,msg', [
    (['data', '--data', '/no/such/folder'], 'no such folder'),
    (['data', '--size', '-1'], 'at least 8'),
    (['data', '--val', '/tmp'], '--val is for image folders'),
    (['data', '--channels', '2'], 'invalid choice'),
    (['data', '--seed', str(2**32)], 'at most 4294967295'),
])
def test_bad_arguments_are_one_line(cache, args, msg):
    assert_one_line_error(lepton_here(*args), msg)      # in this process: no interpreter and PyTorch start per case


def test_no_data_anywhere_names_every_place(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(D, 'DEBIAN_FASHION_DIR', tmp_path/'not-installed')
    monkeypatch.setattr(D, '_download_fashion_mnist', lambda dest: None)   # as with no network
    assert main(['data']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    for part in ('user cache', 'not-installed', 'download', 'apt-get install dataset-fashion-mnist', 'LEPTON_DATA'):
        assert part in err, part


def test_empty_class_folder_is_an_error(cache, tmp_path):
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    Image.new('L', (8, 8)).save(tmp_path/'a'/'x.png')
    assert_one_line_error(lepton('data', '--data', tmp_path), "class folder 'b' is empty")


@pytest.mark.parametrize('after', [0.5, 1.0])
def test_ctrl_c_while_starting_is_one_line(cache, after):
    """Ctrl-C in the first seconds (torch still importing, or the data loading) ends in one line and status 130,
    no traceback."""
    import shutil
    from helpers import BIN
    # SIGINT as a terminal delivers it: a shell's background job (make test &) inherits it ignored, and Python then
    # never turns it into KeyboardInterrupt, so the command would rightly run on
    p = subprocess.Popen([shutil.which('lepton', path=str(BIN)) or 'lepton', 'data'], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after); p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    assert 'interrupted' in err


def test_a_pipe_is_skipped_not_waited_on(cache, tmp_path):
    """A named pipe among the images (reading one would wait forever) is listed as skipped;
    load_image (what predict reads with) refuses one."""
    make_folder(tmp_path/'imgs')
    os.mkfifo(tmp_path/'imgs'/'trouser'/'pipe.png')
    r = lepton('data', '--data', tmp_path/'imgs', '--json', timeout=120)
    assert r.returncode == 0, r.stderr
    skipped = {Path(k['file']).name: k['reason'] for k in last_json(r.stdout)['skipped']}
    assert skipped['pipe.png'] == 'not a regular file (a pipe, socket or device)'
    with pytest.raises(LeptonError, match='not a regular file'): D.load_image(tmp_path/'imgs'/'trouser'/'pipe.png')


def test_a_class_of_unreadable_files_names_them(cache, tmp_path):
    "When every file of a class is unreadable, the error names them with their reasons: the report a user needs."
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    Image.new('L', (8, 8)).save(tmp_path/'a'/'x.png')
    (tmp_path/'b'/'one.png').write_text('not an image'); (tmp_path/'b'/'two.jpg').write_bytes(b'')
    assert_one_line_error(lepton('data', '--data', tmp_path),
                          "class 'b' has no readable images: all 2 of its files were "
                          "skipped: one.png (not an image file (unrecognised format)); two.jpg")

def test_a_file_unreadable_for_now_is_read_when_it_can_be(cache, tmp_path, monkeypatch):
    "A file skipped as unreadable (permissions, an I/O error) is not remembered as skipped: once readable, it is read."
    root = tmp_path/'data'
    for c in 'ab':
        (root/c).mkdir(parents=True)
        for i in range(3): Image.new('L', (8, 8), 40 * i).save(root/c/f'{i}.png')
    real, locked = Path.read_bytes, root/'a'/'2.png'
    def read_bytes(p):
        if p == locked: raise PermissionError(13, 'Permission denied')
        return real(p)
    monkeypatch.setattr(Path, 'read_bytes', read_bytes)
    d = D.load_image_folder(root, valid_pct=0.34, progress=False)
    assert [(p.name, r) for p, r in d.skipped] == [('2.png', 'unreadable (Permission denied)')]
    monkeypatch.setattr(Path, 'read_bytes', real)           # (chmod +r changes neither the size nor the time)
    d = D.load_image_folder(root, valid_pct=0.34, progress=False)
    assert d.skipped == [] and len(d.y_train) + len(d.y_valid) == 6


def test_what_tools_leave_behind_is_not_data_and_loose_files_are_listed(cache, tmp_path):
    """A Mac zip's __MACOSX and a NAS's @eaDir are no classes; an image beside the class folders and an empty file
    are listed."""
    root = tmp_path/'data'
    for c in ('a', 'b', '__MACOSX/a', 'a/@eaDir'): (root/c).mkdir(parents=True, exist_ok=True)
    for c in 'ab':
        for i in range(3): Image.new('L', (8, 8), 40 * i).save(root/c/f'{i}.png')
    (root/'__MACOSX'/'a'/'._0.png').write_bytes(b'resource fork')
    Image.new('L', (8, 8)).save(root/'a'/'@eaDir'/'thumb.png')
    Image.new('L', (8, 8)).save(root/'loose.png'); (root/'b'/'empty.png').write_bytes(b'')
    d = D.load_image_folder(root, valid_pct=0.34, progress=False)
    assert d.classes == ['a', 'b'] and len(d.y_train) + len(d.y_valid) == 6
    assert sorted((p.name, r) for p, r in d.skipped) == [('empty.png', 'an empty file (0 bytes)'),
                                                         ('loose.png', 'not in a class folder')]


def test_held_out_copies_of_training_images_are_counted(cache, tmp_path, capsys):
    "A validation folder holding copies of training images: lepton data warns, and says how many."
    for c in 'ab':
        for split in ('train', 'val'): (tmp_path/split/c).mkdir(parents=True)
        for i in range(3): Image.new('L', (8, 8), 40 * i + (c == 'b')).save(tmp_path/'train'/c/f'{i}.png')
        for i in range(2): (tmp_path/'val'/c/f'copy{i}.png').write_bytes((tmp_path/'train'/c/f'{i}.png').read_bytes())
    Image.new('L', (8, 8), 200).save(tmp_path/'val'/'a'/'new.png')
    d = D.load_image_folder(tmp_path/'train', val=tmp_path/'val', progress=False)
    assert d.report['held_out_copies_of_training_images'] == 4 and len(d.y_valid) == 5
    assert main(['data', '--data', str(tmp_path/'train'), '--val', str(tmp_path/'val')]) == 0
    assert 'warning: 4 held-out images are byte-identical copies of training images' in capsys.readouterr().out
    report = D.load_image_folder(tmp_path/'train', progress=False, valid_pct=0.34).report
    assert report['held_out_copies_of_training_images'] == 0
    (tmp_path/'train'/'c').mkdir(); Image.new('L', (8, 8), 99).save(tmp_path/'train'/'c'/'only.png')
    assert main(['data', '--data', str(tmp_path/'train')]) == 0   # class c: one image, which trains
    assert "warning: no held-out image of 'c': its figures will be n/a" in capsys.readouterr().out


KILLER = r'''
import sys, time, safetensors.torch as st
real = st.save_file
def slow_save(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)          # the bytes are on disk under the temporary name...
    data = open(filename, 'rb').read()
    open(filename, 'wb').write(data[:len(data)//3])      # ...then only a third of them, as if cut off mid-write
    print('writing', flush=True); time.sleep(60)
st.save_file = slow_save
import lepton_nb.data as D
D.load_fashion_mnist()
'''

def test_cache_survives_kill_mid_write(cache):
    p = subprocess.Popen([sys.executable, '-c', KILLER], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert p.stdout.readline().strip() == 'writing'
        tmps = list(cache.glob('.fashion-mnist.safetensors.*.tmp'))
        assert len(tmps) == 1                                  # the half-written file exists, under its temporary name
    finally:
        p.send_signal(signal.SIGKILL); p.wait()
    assert not (cache/'fashion-mnist.safetensors').exists()  # never under the real name
    fm = D.load_fashion_mnist()                                # the next run rebuilds and is right
    assert fm.x_train.shape == (60000, 1, 28, 28) and int(fm.y_train.bincount().min()) == 6000
    assert D.load_stored(cache/'fashion-mnist.safetensors', {'source_hash': fm.source_hash}) is not None


def test_corrupt_cache_is_rebuilt(cache):
    fm = D.load_fashion_mnist()
    p = cache/'fashion-mnist.safetensors'
    p.write_bytes(p.read_bytes()[:1000])                      # damaged behind our back
    fm2 = D.load_fashion_mnist()
    assert torch.equal(fm.x_valid, fm2.x_valid)
    assert p.stat().st_size > 50_000_000


def test_truncated_idx_is_a_clear_error(tmp_path):
    src = D.find_fashion_mnist(download=False)['y_test']
    raw = D.gzip.decompress(Path(src).read_bytes())
    (tmp_path/'t10k-labels-idx1-ubyte').write_bytes(raw[:5000])
    with pytest.raises(LeptonError, match='truncated'): D.read_idx(tmp_path/'t10k-labels-idx1-ubyte')


def test_memory_budget_decides_where_a_folder_is_kept(cache, tmp_path):
    "--memory-budget: under it the images stay in memory; over it they are read from disk, with the same summary."
    make_folder(tmp_path/'imgs')
    runs = {}
    for gb in ('1', '0'):
        r = lepton_here('data', '--data', tmp_path/'imgs', '--memory-budget', gb, '--json')
        assert r.returncode == 0, r.stderr
        runs[gb] = json.loads(r.stdout)
    assert runs['1']['storage']['mode'] == 'memory' and runs['1']['storage']['budget_gb'] == 1
    assert runs['0']['storage']['mode'] == 'disk' and 'read from' in r.stderr and '--memory-budget' in r.stderr
    same = lambda d: {k: v for k, v in d.items() if k != 'storage'}
    assert same(runs['0']) == same(runs['1'])
    r = lepton_here('data', '--data', tmp_path/'imgs', '--memory-budget', '0')   # the summary a person reads says so
    assert r.returncode == 0 and '  storage: ' in r.stdout and 'a batch at a time (memory budget 0 GB)' in r.stdout
    assert_one_line_error(lepton_here('data', '--memory-budget', '-1'), 'must be 0 or more gigabytes')
