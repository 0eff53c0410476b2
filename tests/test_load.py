"""Load: `lepton predict` over a folder holds a bounded amount of memory, whatever the folder's size; two `lepton train`
runs started at once into the same runs/ each finish with a folder of their own.

The benchmark at full size (50,000 images, peak memory and images per second) is scripts/load_predict.py, whose
figures are in benchmarks/load.md; these tests use its helpers on small folders."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'scripts'))
import load_predict as lp

GROWTH_MIB = 8     # what the peak resident memory may grow by from SMALL to BIG images of 64x64x3
SMALL, BIG = 300, 2000   # (1,700 more decoded images are 20 MiB as uint8, twice that if also stacked in one tensor)
# glibc's malloc raises its mmap threshold as large blocks are freed, so a batch's buffers land on the heap, whose
# peak then wanders by ~100 MiB with the number of batches whatever is kept (measured: 300 -> 1,500 images +103 MiB,
# 1,500 -> 3,000 +2 MiB). A fixed threshold keeps large blocks in mmap (returned when freed), so the peak counts what
# is kept (measured with it: 300 -> 4,000 images +9 MiB at 64x64x3, of which the model and result lines are a part).
MALLOC = {'MALLOC_MMAP_THRESHOLD_': '131072'}


@pytest.fixture(scope='module')
def model_run(tmp_path_factory):
    return lp.make_model(tmp_path_factory.mktemp('load')/'run', 64, 3)


def test_predict_memory_does_not_grow_with_the_folder(model_run, tmp_path, monkeypatch):
    "Peak RSS of `lepton predict RUN FOLDER` on BIG images is within GROWTH_MIB of that on SMALL images."
    for k, v in MALLOC.items(): monkeypatch.setenv(k, v)
    peaks = {}
    for n in (SMALL, BIG):
        r = lp.run_predict(model_run, lp.make_folder(tmp_path/f'images{n}', n, 64, 3))
        assert r['status'] == 0 and r['lines'] == n, r
        peaks[n] = r['peak_rss_mib']
    assert peaks[BIG] - peaks[SMALL] <= GROWTH_MIB, peaks


def test_predict_labels_every_image_of_a_folder(model_run, tmp_path):
    "Each of 1,200 images in two sub-folders is labelled (a line each); the run ends 0 with nothing on stderr."
    r = lp.run_predict(model_run, lp.make_folder(tmp_path/'images', 1200, 64, 3))
    assert r['status'] == 0 and r['lines'] == 1200 and not r['stderr_tail'], r


def test_two_trains_at_once_get_a_folder_each(tmp_path):
    """Two `lepton train` runs on the same data started at the same moment in the same working folder: both pick the
    free default name runs/<data>-<model>; the first to create it keeps it, the other takes the next one; both finish
    with their own model and metrics."""
    from lepton_nb.data import make_messy_folder
    make_messy_folder(tmp_path/'shapes', n_per_class=8)
    exe = str(lp.BIN/'lepton')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'LEPTON_CACHE': str(tmp_path/'cache')}
    cmd = [exe, 'train', '--data', 'shapes', '--model', 'seed', '--epochs', '1', '--json']
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs): assert p.returncode == 0 and 'Traceback' not in err, err
    runs = sorted(d.name for d in (tmp_path/'runs').iterdir())
    assert runs == ['shapes-seed', 'shapes-seed-2'], runs
    for d in runs:
        assert (tmp_path/'runs'/d/'model.safetensors').is_file() and (tmp_path/'runs'/d/'config.json').is_file()
        assert json.loads((tmp_path/'runs'/d/'metrics.json').read_text())
