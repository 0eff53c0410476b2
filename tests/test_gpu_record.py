"""benchmarks/gpu.json, the record of `scripts/gpu_check.sh` on a GPU machine, and the pages that quote it: the record
must be whole, and a figure quoted in notebook 08, notebook 09 or the README must be the record's."""
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.loads((ROOT/'benchmarks'/'gpu.json').read_text())

def prose(name:str) -> str:
    "The markdown cells of a notebook (or the README), as one text with each run of white space one space."
    if name == 'README.md': return ' '.join((ROOT/name).read_text().split())
    cells = json.loads((ROOT/'nbs'/name).read_text())['cells']
    return ' '.join(' '.join(''.join(c['source']).split()) for c in cells if c['cell_type'] == 'markdown')

def test_the_record_is_whole():
    g = RECORD
    assert g['card'].startswith('NVIDIA') and g['device']['name'] == g['card'] and g['device']['capability']
    assert re.fullmatch(r'\d+ passed(, \d+ \w+)* in [\d.]+s( \([\d:]+\))?', g['cuda_tests'][0])
    assert g['cuda_tests'][-1] == 'rc=0'
    assert {'fast10', 'fast60', 'seed60', 'gan120'} <= set(g['runs'])
    for name, r in g['runs'].items():
        budget = float(re.search(r'--time-budget (\d+)', r['command'])[1])
        assert r['command'].startswith('lepton ') and abs(r['train_seconds'] - budget) < 1, name   # the budget, spent
        assert r['stop_reason'] == f"time budget of {budget:g} s reached", name
        if 'test_accuracy' in r:
            h = r['accuracy_by_epoch']
            assert [e[0] for e in h] == list(range(1, len(h) + 1)) and all(0 < e[2] < 1 for e in h), name
            assert all(a[1] < b[1] <= r['train_seconds'] for a, b in zip(h, h[1:])), name     # the clock only moves on
            for t in (91, 93, 94):   # the first epoch at t%, as the history says
                hit = next(({'train_seconds': e[1], 'epoch': e[0]} for e in h if e[2] >= t / 100), None)
                assert r[f'first_{t}'] == hit, (name, t)
        else:
            h = r['fid_by_epoch']
            assert r['fid'] == h[-1][2] and abs(r['fid_ratio'] - r['fid'] / r['fid_floor']) < 1e-3, name
            for t in (12.8, 10):
                hit = next(({'train_seconds': e[1], 'epoch': e[0]} for e in h if e[2] / r['fid_floor'] <= t), None)
                assert r[f'first_fid_ratio_at_most_{t}'] == hit, (name, t)

def test_the_pages_quote_the_record():
    "The figures the prose of 08, 09 and the README states, computed from the record."
    runs, nb08, nb09 = RECORD['runs'], prose('10_cnn.ipynb'), prose('12a_gan_run.ipynb')
    pct = lambda k: f"{runs[k]['test_accuracy']:.2%}"
    assert f"reaches {pct('fast10')} (width 32, {runs['fast10']['epochs']:.1f} epochs)" in nb08
    assert f"it reached {pct('fast10_w16')}" in nb08 and f"width 32's {pct('fast10')}" in nb08
    best60 = max((k for k in runs if k.startswith('fast60')), key=lambda k: runs[k]['test_accuracy'])
    assert f"reached {pct(best60)} (width {runs[best60]['recipe']['width']})" in nb08
    ends = [runs[k]['accuracy_by_epoch'][-1][2] for k in runs if k.startswith('fast60')]
    assert f"({min(ends):.1%}-{max(ends):.1%} before TTA at their last epoch)" in nb08
    assert f"{pct('seed60')} after 60 s ({len(runs['seed60']['accuracy_by_epoch'])} epochs" in nb08
    assert f"reached {pct('fast10')} (one run" in prose('README.md')
    gan, hit = runs['gan120'], runs['gan120']['first_fid_ratio_at_most_12.8']
    before = [e[1] for e in gan['fid_by_epoch'] if e[0] < hit['epoch']][-1]     # the measurement before the crossing
    assert f"FID {gan['fid']:.2f}, {gan['fid_ratio']:.1f} times its floor" in nb09
    assert f"after epoch {hit['epoch']}, at {hit['train_seconds']:.0f} s" in nb09
    assert f"between {before:.0f} s and {hit['train_seconds']:.0f} s" in nb09
    assert f"{300 / hit['train_seconds']:.1f} to {300 / before:.1f} times sooner" in nb09

def test_gpu_check_runs_and_folds_on_a_cpu(tmp_path, cache):
    "The GPU check's own plumbing, dry-run on the CPU with budgets cut to a tenth: steps, skips, commands, the fold."
    import os, subprocess, sys
    env = {**os.environ, 'OUT': str(tmp_path/'out'), 'DEVICE': 'cpu', 'SCALE': '0.1', 'DEADLINE_S': '200',
           'PY': sys.executable}
    r = subprocess.run(['bash', 'scripts/gpu_check.sh', 'device', 'fast10', 'seed60', 'gan120'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    g = json.loads((tmp_path/'out'/'gpu.json').read_text())
    assert g['card'] == g['device']['name'] and g['device']['torch']
    assert g['skipped'] == ['gan120']                          # 200 s left is less than the GAN step may take
    assert g['runs']['fast10']['command'] == 'lepton train --device cpu --time-budget 1'
    assert 'error' not in g['runs']['fast10'] and g['runs']['fast10']['stop_reason'] == 'time budget of 1 s reached'
    assert g['runs']['seed60']['command'] == 'lepton train --device cpu --time-budget 6 --model seed'
    seed60 = g['runs']['seed60']
    assert seed60['stop_reason'] == 'time budget of 6 s reached' and seed60['test_accuracy'] > 0.5
    # run folders and step files gone
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['gpu.json', 'log.txt']
    merged = subprocess.run([sys.executable, 'scripts/gpu_record.py', 'merge', str(ROOT/'benchmarks'/'gpu.json'),
                             str(tmp_path/'out'/'gpu.json'), '--note', 'date=today'],
                            capture_output=True, text=True, check=True)
    m = json.loads(merged.stdout)
    assert m['date'] == 'today' and m['card'] == g['card'] and m['runs']['fast10'] == g['runs']['fast10']   # later wins
    assert m['runs']['gan120'] == RECORD['runs']['gan120'] and m['cuda_tests'] == RECORD['cuda_tests']  # the rest kept

def test_merge_keeps_good_runs_and_lists_what_no_call_measured():
    import importlib.util
    spec = importlib.util.spec_from_file_location('gpu_record', ROOT/'scripts'/'gpu_record.py')
    gr = importlib.util.module_from_spec(spec); spec.loader.exec_module(gr)
    a = {'card': 'X', 'device': {'name': 'X'}, 'cuda_tests': ['1 passed in 1.0s', 'rc=0'], 'bench': {'r': 1},
         'runs': {'f': {'command': 'c', 'test_accuracy': 0.9}, 'g': {'command': 'g1'}}, 'skipped': ['h']}
    b = {'card': 'X', 'device': None, 'bench': {'error': 'no JSON line'},
         'runs': {'f': {'command': 'c', 'error': 'no JSON line'}, 'g': {'command': 'g2'}},
         'skipped': ['tests', 'h', 'i']}
    m = gr.merge([a, b], {'date': 'd'})
    assert m['runs'] == {'f': a['runs']['f'], 'g': b['runs']['g']}  # a failure never replaces a result; else later wins
    assert m['bench'] == {'r': 1} and m['device'] == {'name': 'X'} and m['date'] == 'd'
    assert m['skipped'] == ['h', 'i']                                     # 'tests' was measured by the first call
    want = '{\n "h": [\n  [1, 2.5, null]\n ],\n "s": [\n  "a  b"\n ]\n}\n'
    assert gr.dumps({'h': [[1, 2.5, None]], 's': ['a  b']}) == want

def test_merging_the_record_gives_the_record(tmp_path):
    import subprocess, sys
    r = subprocess.run([sys.executable, 'scripts/gpu_record.py', 'merge', 'benchmarks/gpu.json'], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    assert r.stdout == (ROOT/'benchmarks'/'gpu.json').read_text()
