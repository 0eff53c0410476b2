"""The long fuzz lane: the targets of tests/test_fuzz.py fed with generated inputs at full speed (no Hypothesis).

Each target runs in a worker process of its own with a memory bound (`resource.setrlimit`, RLIMIT_AS) and the per-case
time limit of tests/test_fuzz.py (`signal.setitimer`). The inputs: random bytes, truncations, bit flips, insertions
and replaced tails of real IDX, JSON, checkpoint and PNG/JPEG/GIF seeds, configs with keys dropped, added or set to
random JSON values, odd file names, and argument lists built from `lepton`'s own words. The checks are those of
tests/test_fuzz.py, imported from it: a value, or a `LeptonError` of one line; never another exception, a hang, or a
worker killed (memory, signal). A failing case is printed and saved, with its traceback, under --failures as a Python
literal that `--replay FILE` runs again.

    python scripts/fuzz_long.py --cases 100000            # every target, 100,000 cases each
    python scripts/fuzz_long.py --cases 2000 --only json,cli --seed 3
    python scripts/fuzz_long.py --replay build/fuzz-failures/image/17.py
"""
import argparse, gzip, json, math, os, random, resource, string, struct, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT/'tests')]
os.environ.setdefault('OMP_NUM_THREADS', '1')

import test_fuzz as tf                    # noqa: E402  (the targets and their checks)
from lepton_nb.resilience import save_checkpoint, load_checkpoint  # noqa: E402
from lepton_nb.core import seed_everything  # noqa: E402

MEMORY_HEADROOM = 2 << 30                 # bytes of address space a worker may add to what it holds at its start


# ---------------------------------------------------------------------------------------------------- generators

def rbytes(r:random.Random, n:int) -> bytes: return r.randbytes(r.randint(0, n))


def mutation(r:random.Random):
    "A mutation in the form of test_fuzz.mutations: (kind, cut, flips, junk)."
    return (r.choice(['truncate', 'flip', 'insert', 'replace_tail']), r.randint(0, 1 << 20),
            [(r.randint(0, 1 << 20), r.randint(0, 7)) for _ in range(r.randint(1, 8))], rbytes(r, 64))


ODD_TEXT = ['', ' ', '\n', '\x00', 'é', '\u202e', '😀', '\udcff', '-', '..', 'a' * 300, 'NaN', '1e999', '{', '"']


def text(r:random.Random, n:int=20, breaks:bool=True) -> str:
    if r.random() < 0.2: s = r.choice(ODD_TEXT)
    else:
        alphabet = string.printable if r.random() < 0.7 else ''.join(map(chr, range(0x20, 0x3000, 7)))
        s = ''.join(r.choice(alphabet) for _ in range(r.randint(0, n)))
    return s if breaks else s.replace('\n', ' ').replace('\r', ' ')


def json_value(r:random.Random, depth:int=0, finite:bool=False):
    "A random JSON value: scalars of every kind (huge integers, NaN and infinities unless `finite`), lists, objects."
    k = r.randint(0, 9 if depth < 3 else 6)
    if k == 0: return None
    if k == 1: return r.random() < 0.5
    if k == 2: return r.choice([0, 1, -1, 2, 3, 28, 255, 256, 2**31, 2**63 - 1, -2**63] + ([] if finite else [10**400]))
    if k == 3: return r.randint(-2**64, 2**64) if not finite else r.randint(-2**63, 2**63)
    if k == 4:
        pool = [0.0, -0.0, 0.5, 1e-320, 1e308, -1e308, r.uniform(-1e3, 1e3)]
        return r.choice(pool + ([] if finite else [math.inf, -math.inf, math.nan]))
    if k in (5, 6): return text(r)
    if k in (7, 8): return [json_value(r, depth + 1, finite) for _ in range(r.randint(0, 12 if finite else 5))]
    return {text(r, 8): json_value(r, depth + 1, finite) for _ in range(r.randint(0, 5))}


def json_raw(r:random.Random) -> bytes:
    k = r.randint(0, 3)
    if k == 0: return rbytes(r, 200)
    if k == 3: n = r.randint(1, 3000); return b'[' * n + b']' * n
    raw = json.dumps(json_value(r)).encode()
    return raw if k == 1 else tf.mutate(raw, *mutation(r))


def edited(r:random.Random, base:dict, finite:bool):
    "A config near `base` (keys dropped, added or set), or now and then any JSON value: as test_fuzz.edited."
    if r.random() < 0.1: return json.loads(json.dumps(json_value(r, finite=finite)))
    cfg = dict(base)
    for _ in range(r.randint(0, 4)):
        k = r.choice(sorted(base)) if r.random() < 0.7 else text(r, 12)
        if r.random() < 0.5: cfg.pop(k, None)
        else: cfg[k] = json_value(r, finite=finite)
    return json.loads(json.dumps(cfg))


IDX_CODES = sorted(tf.IDX_TYPES)


def idx_raw(r:random.Random) -> bytes:
    "An IDX file as test_fuzz.idx_bytes draws it: a header (often valid) and a body of about the announced length."
    import numpy as np
    magic = b'\0\0' if r.random() < 0.8 else rbytes(r, 2)
    code = r.choice(IDX_CODES) if r.random() < 0.8 else r.randint(0, 255)
    ndim = r.randint(1, 4) if r.random() < 0.8 else r.randint(0, 255)
    dims = [r.randint(0, 5) if r.random() < 0.85 else r.randint(0, 2**32 - 1) for _ in range(min(ndim, 5))]
    header = magic + bytes([code, ndim]) + b''.join(struct.pack('>I', d) for d in dims)
    n = int(np.prod(dims, dtype=object)) * np.dtype(tf.IDX_TYPES.get(code, '>u1')).itemsize if dims else 0
    size = n + r.choice([0, 0, 0, -1, 1, -n, r.randint(-8, 8)]) if n < 4096 else r.randint(0, 64)
    raw = header + r.randbytes(max(size, 0))
    if r.random() < 0.2: raw = gzip.compress(raw, mtime=0)[:r.randint(0, 1 << 16)]
    return raw


IMAGE_ARGS = [{}, {'size': None}, {'size': (20, 30), 'channels': 3}, {'channels': None, 'size': 8}, {'background': 255}]
MAGICS = [b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff', b'GIF89a']
NAME_KINDS = ['file', 'file', 'missing', 'folder', 'fifo', 'dangling_link', 'link', 'empty']
NAME_EXTS = ['', '.png', '.jpg', '.jpeg', '.gif', '.PNG', '.webp', '.bmp', '.txt', '.']


def odd_name(r:random.Random) -> str:
    while True:
        s = text(r, 40).replace('/', '_').replace('\0', '_') + r.choice(NAME_EXTS)
        if s not in ('', '.', '..') and len(os.fsencode(s)) < 250: return s


def argv(r:random.Random) -> list:
    "An argument list of `lepton`'s own words, awkward values and random text (line breaks now and then)."
    def word():
        k = r.random()
        if k < 0.5: return r.choice(tf.WORDS)
        if k < 0.8: return r.choice(VALUES)
        return text(r, 12, breaks=r.random() < 0.3)
    return [word() for _ in range(r.randint(0, 8))]


VALUES = ['0', '1', '-1', '2', '3', '28', '0.5', '1e999', '-1e999', 'nan', 'inf', 'auto', '', ' ', '-', '--',
          '9' * 5000, '0x10', '1_000', '٣', 'fast', 'seed', 'cpu', 'cuda', 'mps', 'cuda:7', 'x.png', 'none',
          'flip,shift', 'imagenet']


# ---------------------------------------------------------------------------------------------------- targets

class Monkey:
    "The one `monkeypatch.setattr` that test_fuzz.check_argv uses, kept for the worker's life."
    def setattr(self, obj, name, value): setattr(obj, name, value)


def targets(work:Path) -> dict:
    """name -> (make a case from a random.Random, run the case). The runs are test_fuzz's own checks; the state they
    need (seed files, the stub parser) is made once per worker."""
    state = {}
    def checkpoint():
        if 'ckpt' not in state:
            p = work/'seed.pt'
            seed_everything(0); save_checkpoint(tf.tiny_learner(), p); load_checkpoint(tf.tiny_learner(), p)
            state['ckpt'] = p.read_bytes()
        return state['ckpt']
    def stub():
        if 'stub' not in state: state['stub'] = tf.stub_parser._get_wrapped_function()()
        return state['stub']
    def write(name, raw): p = work/name; p.write_bytes(raw); return p
    def run_options(r):
        if r.random() < 0.1: return json_value(r)
        return {(r.choice(sorted(tf.SAVED_TYPES)) if r.random() < 0.6 else text(r, 10)): json_value(r)
                for _ in range(r.randint(0, 6))}
    idx_names = sorted(tf.REAL_IDX)
    image_names = sorted(tf.IMAGES)
    def image_case(r):
        k = r.random()
        raw = None if k < 0.7 else rbytes(r, 300) if k < 0.85 else r.choice(MAGICS) + rbytes(r, 200)
        return r.choice(image_names), mutation(r), r.choice(IMAGE_ARGS), raw
    def image_run(c):
        name, m, kw, raw = c
        tf.check_image(write('img' + Path(name).suffix, tf.mutate(tf.IMAGES[name], *m) if raw is None else raw), kw)
    def ckpt_case(r): return rbytes(r, 512) if r.random() < 0.6 else b'PK\x03\x04' + rbytes(r, 256)
    return {
        'idx': (idx_raw, lambda raw: tf.check_idx(write('gen.idx', raw), raw)),
        'idx_mutated': (lambda r: (r.choice(idx_names), mutation(r)),
                        lambda c: tf.check_idx(write('real.idx', raw := tf.mutate(tf.REAL_IDX[c[0]], *c[1])), raw)),
        'json': (json_raw, lambda raw: tf.test_load_json.hypothesis.inner_test(work, raw)),
        'config': (lambda r: edited(r, tf.CONFIG, finite=r.random() < 0.5),
                   lambda cfg: tf.test_check_config.hypothesis.inner_test(cfg)),
        'gan_config': (lambda r: edited(r, tf.GAN_CONFIG, finite=False),
                       lambda cfg: tf.test_check_gan_config.hypothesis.inner_test(cfg)),
        'train_args': (run_options, lambda args: tf.check_saved_args(work, args)),
        'checkpoint': (ckpt_case, lambda raw: (checkpoint(), tf.check_checkpoint(write('random.pt', raw)))),
        'checkpoint_mutated': (lambda r: mutation(r),
                               lambda m: tf.check_checkpoint(write('mutated.pt', tf.mutate(checkpoint(), *m)))),
        'image': (image_case, image_run),
        'image_names': (lambda r: (odd_name(r), r.choice(image_names), r.choice(NAME_KINDS)),
                        lambda c: tf.test_image_odd_names.hypothesis.inner_test(work, *c)),
        'cli': (argv, lambda a: tf.check_argv(Monkey(), stub(), a)),
    }


# ---------------------------------------------------------------------------------------------------- worker

def vm_size() -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmSize:'): return int(line.split()[1]) * 1024
    return 0


def save_failure(folder:Path, target:str, i:int, seed:int, case, err:str) -> Path:
    folder = folder/target; folder.mkdir(parents=True, exist_ok=True)
    p = folder/f'{i}.py'
    comment = ''.join(f'# {line}\n' for line in [f'target {target}, case {i} of seed {seed}'] + err.splitlines())
    p.write_text(comment + f'target = {target!r}\ncase = {case!r}\n')
    return p


def worker(name:str, n:int, seed:int, failures:Path, out_fd:int, until:float=math.inf):
    "Run `n` cases of target `name` (fewer if the clock passes `until`); write one JSON line of figures to `out_fd`."
    soft = vm_size() + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))
    rss0 = tf.peak_rss()
    import warnings; warnings.simplefilter('ignore')       # torch's and PIL's warnings are not failures
    work = Path(tempfile.mkdtemp(prefix=f'fuzz-{name}-'))
    make, run = targets(work)[name]
    r = random.Random(f'{seed}/{name}')
    last = failures/name/'last_case.py'
    last.parent.mkdir(parents=True, exist_ok=True)
    found, kinds, t0 = [], {}, time.perf_counter()
    done = 0
    for i in range(n):
        if i % 1000 == 0:
            if time.time() > until: break
            (failures/name/'progress.txt').write_text(f'{i} cases in {time.perf_counter() - t0:.0f} s\n')
        case = make(r)
        if i % 1000 == 0: last.write_text(f'target = {name!r}\ncase = {case!r}\n')   # cheap trail if the worker dies
        try: run(case)
        except BaseException as e:                                       # Hang, AssertionError, anything
            if isinstance(e, KeyboardInterrupt): raise
            tb = traceback.extract_tb(e.__traceback__)
            kind = f'{type(e).__name__} at {Path(tb[-1].filename).name}:{tb[-1].lineno}' if tb else type(e).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
            if kinds[kind] <= 3:                                         # the first three of each kind are saved
                p = save_failure(failures, name, i, seed, case, ''.join(traceback.format_exception(e)))
                found.append(str(p))
                print(f'FAIL {name} case {i}: {kind}: {str(e)[:200]} (reproducer: {p})', file=sys.stderr, flush=True)
        done = i + 1
    os.write(out_fd, (json.dumps({'target': name, 'cases': done, 'failures': sum(kinds.values()), 'kinds': kinds,
                                  'saved': found, 'seconds': time.perf_counter() - t0,
                                  'rss_grown_mib': (tf.peak_rss() - rss0) >> 20}) + '\n').encode())


def run_target(name:str, n:int, seed:int, failures:Path, until:float=math.inf, log:Path|None=None) -> dict:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 0
        try: worker(name, n, seed, failures, wfd, until)
        except BaseException: traceback.print_exc(); code = 1
        finally: os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as f: line = f.read()
    _, status = os.waitpid(pid, 0)
    if line:
        if log:
            with open(log, 'a') as f: f.write(line)
        return json.loads(line)
    why = f'signal {os.WTERMSIG(status)}' if os.WIFSIGNALED(status) else f'status {os.WEXITSTATUS(status)}'
    print(f'FAIL {name}: the worker died ({why}); its last case trail: {failures/name/"last_case.py"}', file=sys.stderr)
    return {'target': name, 'cases': 0, 'failures': 1, 'kinds': {f'worker died ({why})': 1}, 'saved': [], 'seconds': 0,
            'rss_grown_mib': -1}


def replay(path:Path) -> int:
    "Run one saved case again, in this process, with the traceback shown."
    ns = {'inf': math.inf, 'nan': math.nan}
    exec(compile(Path(path).read_text(), str(path), 'exec'), ns)
    work = Path(tempfile.mkdtemp(prefix='fuzz-replay-'))
    targets(work)[ns['target']][1](ns['case'])
    print(f'{path}: passes now')
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--cases', type=int, default=int(os.environ.get('LEPTON_FUZZ_CASES') or 100_000))
    p.add_argument('--only', default='', help='comma-separated targets (default: all)')
    p.add_argument('--seed', type=int, default=None, help='default: fresh from the clock')
    p.add_argument('--jobs', type=int, default=1, help='targets run at once')
    p.add_argument('--failures', type=Path, default=Path('build/fuzz-failures'))
    p.add_argument('--replay', type=Path)
    p.add_argument('--max-minutes', type=float, default=math.inf, help='stop each target at this time after the start')
    p.add_argument('--log', type=Path, help='append each target\'s figures to this file (JSON lines) as it ends')
    a = p.parse_args(argv)
    if a.replay: return replay(a.replay)
    seed = a.seed if a.seed is not None else int(time.time())
    names = [n for n in targets(Path('.')) if not a.only or n in a.only.split(',')]
    print(f'seed {seed}, {a.cases} cases per target, {len(names)} targets, {a.jobs} at once', flush=True)
    t0, results = time.perf_counter(), []
    until = time.time() + 60 * a.max_minutes
    one = lambda n: run_target(n, a.cases, seed, a.failures, until, a.log)
    if a.jobs <= 1: results = [one(n) for n in names]
    else:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(a.jobs) as ex:
            results = list(ex.map(one, names))
    print('\n| target | cases | failures | seconds | cases/s | peak RSS grown (MiB) |\n|---|---:|---:|---:|---:|---:|')
    for x in results:
        rate = x['cases'] / x['seconds'] if x['seconds'] else 0
        print(f"| {x['target']} | {x['cases']:,} | {x['failures']} | {x['seconds']:.0f} | {rate:,.0f} | "
              f"{x['rss_grown_mib']} |")
    total = sum(x['cases'] for x in results)
    bad = sum(x['failures'] for x in results)
    for x in results:
        for kind, k in x['kinds'].items(): print(f"{x['target']}: {k} x {kind}")
    print(f'\n{total:,} cases in {time.perf_counter() - t0:.0f} s, {bad} failures (seed {seed})')
    return 1 if bad or any(x['cases'] < a.cases for x in results) else 0


if __name__ == '__main__':
    sys.exit(main())
