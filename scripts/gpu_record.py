"""The GPU record: what scripts/gpu_check.sh measured, as one JSON file (benchmarks/gpu.json).

    python scripts/gpu_record.py fold RAW OUT.json       # gpu_check.sh: each step's output in RAW -> one gpu.json
    python scripts/gpu_record.py merge A.json B.json ... [--note KEY=TEXT ...] > benchmarks/gpu.json
                                                         # several calls of gpu_check.sh (later runs win) -> the record

A record holds the card, its software, the CUDA tests' last lines, and per run its command, figures and per-epoch
history; for a classifier the first epoch at 91%, 93% and 94% test accuracy, for a GAN the first epoch at which the
FID came within the CPU run's 12.8 times its floor (notebook 09) and within 10 times."""
import argparse, json, re, sys
from pathlib import Path

TRAIN_KEYS = ('test_accuracy', 'f1_macro', 'epochs', 'train_seconds', 'wall_seconds', 'model', 'stop_reason')
GAN_KEYS = ('fid', 'fid_floor', 'fid_ratio', 'classifier_score', 'coverage_min', 'epochs', 'steps', 'train_seconds',
            'wall_seconds', 'batch_size', 'width', 'stop_reason')
CPU_GAN_RATIO = 12.8   # notebook 09's CPU run: FID 12.8 times its floor after 300 s (lepton gan --time-budget 300)

def last_json(p:Path):
    "The JSON object on the file's last line, or None."
    try: return json.loads(p.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError): return None

def first(hist:list, ok) -> dict|None:
    "The train_seconds and epoch of the first history entry ([epoch, seconds, value]) whose value passes `ok`."
    return next(({'train_seconds': h[1], 'epoch': h[0]} for h in hist if h[2] is not None and ok(h[2])), None)

def run_entry(command:str, m:dict) -> dict:
    "The record of one run from its command and its --json metrics."
    h = m.get('history', [])
    if 'fid' in m:       # lepton gan
        r = {'command': command, **{k: m.get(k) for k in GAN_KEYS}}
        r['fid_by_epoch'] = [[e['epoch'], e['train_seconds'], e.get('fid')] for e in h]
        floor = m.get('fid_floor') or float('nan')
        r[f'first_fid_ratio_at_most_{CPU_GAN_RATIO}'] = first(r['fid_by_epoch'], lambda v: v / floor <= CPU_GAN_RATIO)
        r['first_fid_ratio_at_most_10'] = first(r['fid_by_epoch'], lambda v: v / floor <= 10)
        return r
    r = {'command': command, **{k: m.get(k) for k in TRAIN_KEYS}}
    r['recipe'] = {k: m.get('recipe', {}).get(k) for k in ('width', 'bs', 'lr')}
    r['accuracy_by_epoch'] = [[e['epoch'], e['train_seconds'], e.get('accuracy')] for e in h]
    for t in (91, 93, 94): r[f'first_{t}'] = first(r['accuracy_by_epoch'], lambda v: v >= t / 100)
    return r

def fold(raw:Path) -> dict:
    "A gpu.json from gpu_check.sh's step files: device.json, tests.txt, skipped.txt, and NAME.cmd + NAME.json per run."
    dev = last_json(raw/'device.json')
    res = {'card': dev and dev['name'], 'device': dev, 'runs': {}}
    if (raw/'tests.txt').exists(): res['cuda_tests'] = (raw/'tests.txt').read_text().strip().splitlines()[-2:]
    if (raw/'skipped.txt').exists(): res['skipped'] = (raw/'skipped.txt').read_text().split()
    for p in sorted(raw.glob('*.cmd')):
        m, command = last_json(p.with_suffix('.json')), p.read_text().strip()
        entry = {'command': command, 'error': 'no JSON line: see log.txt'} if m is None else None
        if p.stem == 'bench': res['bench'] = entry or {'command': command, **m}
        else: res['runs'][p.stem] = entry or run_entry(command, m)
    return res

def merge(records:list, notes:dict) -> dict:
    """One record from several: the later record wins, field by field and run by run, except that a failed run (or
    bench) never replaces a good one; then `notes`. `skipped` lists the steps no record measured."""
    good = lambda new, old: old is None or 'error' not in new or 'error' in old
    out, runs = {}, {}
    for r in records:
        for k, v in r.items():
            if k in ('runs', 'skipped') or v is None or (k == 'bench' and not good(v, out.get(k))): continue
            out[k] = v
        runs.update({k: v for k, v in r.get('runs', {}).items() if good(v, runs.get(k))})
    out.update(notes)
    parts = (('bench', 'bench'), ('tests', 'cuda_tests'), ('device', 'device'))
    measured = set(runs) | {s for s, k in parts if out.get(k)}
    skipped = sorted({s for r in records for s in r.get('skipped', [])} - measured)
    return {**out, 'runs': runs, **({'skipped': skipped} if skipped else {})}

_SCALAR = r'(?:-?[\d.]+(?:[eE][-+]?\d+)?|null|true|false)'
def dumps(d:dict) -> str:
    "Indented JSON with each innermost list of numbers on one line (a history stays one line per epoch)."
    return re.sub(rf'\[\s+({_SCALAR}(?:,\s+{_SCALAR})*)\s+\]', lambda m: '[' + re.sub(r',\s+', ', ', m.group(1)) + ']',
                  json.dumps(d, indent=1)) + '\n'

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    f = sub.add_parser('fold', help="one call's step files -> gpu.json")
    f.add_argument('raw', type=Path); f.add_argument('out', type=Path)
    m = sub.add_parser('merge', help="several gpu.json -> one record, on standard output")
    m.add_argument('files', nargs='+', type=Path)
    m.add_argument('--note', action='append', default=[], metavar='KEY=TEXT', help="a field to add (repeatable)")
    a = p.parse_args(argv)
    if a.cmd == 'fold': a.out.write_text(dumps(fold(a.raw))); return
    bad = [n for n in a.note if '=' not in n]
    if bad: p.error(f"--note takes KEY=TEXT, got {bad[0]!r}")
    sys.stdout.write(dumps(merge([json.loads(f.read_text()) for f in a.files], dict(n.split('=', 1) for n in a.note))))

if __name__ == '__main__': main()
