"""Fuzzing the parsers with generated inputs (Hypothesis): the IDX reader, the JSON readers and config checkers, the
checkpoint loader, the image decoder and `lepton`'s argument parsing.

The property is the same for each: the input is read, or refused with a `LeptonError` of one line; never another
exception (a traceback for the user), never a hang (each case has a time limit, `Hang`), never unbounded memory (the
process's peak resident memory may grow by at most `MEMORY_LIMIT` over a test). Where a reader succeeds, what it
returns is checked against an independent decoding where one exists (the IDX body against NumPy).

The quick lane (the counts in `QUICK`, a few thousand cases in all) runs with the rest of `pytest`, derandomised so
that it is the same on every run. `make fuzz` runs the same tests with `LEPTON_FUZZ_CASES` cases per target (and
fresh random draws). A bug found is kept as an `@example`."""
import contextlib, gzip, io, json, os, resource, signal, string, struct, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from lepton_nb.core import LeptonError, get_rng_states, load_json, seed_everything, set_rng_states
from lepton_nb.data import load_image, read_idx
from lepton_nb.artifacts import SAVED_TYPES, check_config, saved_args
from lepton_nb.cnn import CLASSIFIER
from lepton_nb.gan import GAN
from lepton_nb.resilience import load_checkpoint, save_checkpoint
from lepton_nb.learner import Learner
import lepton_nb.cli as cli

CASES = int(os.environ.get('LEPTON_FUZZ_CASES') or 0)   # 0: the quick lane's counts
QUICK = {'idx': 400, 'idx_mutated': 300, 'json': 250, 'config': 200, 'gan_config': 200, 'train_args': 150,
         'checkpoint': 120, 'checkpoint_mutated': 150, 'image': 350, 'image_names': 120, 'cli': 300}
MEMORY_LIMIT = 768 << 20    # bytes of peak resident memory a test may add
CASE_SECONDS = 20           # a case that takes longer is a hang


def fuzz(target:str, deadline_ms:int=10_000):
    "Hypothesis settings of one target: its case count, a deadline per case, no example database."
    return settings(max_examples=CASES or QUICK[target], deadline=deadline_ms, derandomize=not CASES, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
                    print_blob=True)


class Hang(BaseException):
    "A case ran past CASE_SECONDS (a BaseException, so that no `except Exception` in the code under test hides it)."


@contextlib.contextmanager
def time_limit(seconds:float=CASE_SECONDS):
    def alarm(*_): raise Hang(f'no answer in {seconds} s')
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try: yield
    finally: signal.setitimer(signal.ITIMER_REAL, 0); signal.signal(signal.SIGALRM, old)


def one_line(text:str, path=None) -> bool:
    "No line break in `text`, but for those of the file name the user gave (`path`), which an error quotes as given."
    if path is not None: text = text.replace(str(path), '')
    return '\n' not in text and '\r' not in text


def read_or_refuse(f, *args, path=None, **kw):
    "Call `f`: its value, or None if it refused with a one-line `LeptonError`; any other exception fails the case."
    with time_limit():
        try: return f(*args, **kw)
        except LeptonError as e:
            assert str(e) and one_line(str(e), path), f'a LeptonError of more than one line: {str(e)!r}'
            return None


def peak_rss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == 'darwin' else r * 1024


@pytest.fixture(autouse=True)
def bounded_memory():
    "The peak resident memory of the process grows by at most MEMORY_LIMIT during a test."
    before = peak_rss()
    yield
    grown = peak_rss() - before
    assert grown <= MEMORY_LIMIT, f'peak resident memory grew by {grown >> 20} MiB'


@pytest.fixture(scope='module')
def work(tmp_path_factory): return tmp_path_factory.mktemp('fuzz')


def flip_bits(data:bytes, flips:list) -> bytes:
    "Flip bit `b` of byte `i % len` for each (i, b)."
    out = bytearray(data)
    for i, b in flips:
        if out: out[i % len(out)] ^= 1 << b
    return bytes(out)


def mutate(data:bytes, kind:str, cut:int, flips:list, junk:bytes) -> bytes:
    "A damaged copy of `data`: truncated, bits flipped, bytes inserted, or the tail replaced."
    cut = cut % (len(data) + 1)
    if kind == 'truncate': return data[:cut]
    if kind == 'flip': return flip_bits(data, flips)
    if kind == 'insert': return data[:cut] + junk + data[cut:]
    return data[:cut] + junk                                            # 'replace_tail'


mutations = st.tuples(st.sampled_from(['truncate', 'flip', 'insert', 'replace_tail']), st.integers(0, 1 << 20),
                      st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=8),
                      st.binary(max_size=64))


# ---------------------------------------------------------------------------------------------------- IDX files

IDX_TYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


@st.composite
def idx_bytes(draw):
    "An IDX file: a header (often valid, sometimes not) and a body of the length it announces, or not quite."
    magic = draw(st.just(b'\0\0') | st.binary(min_size=0, max_size=2))
    code = draw(st.sampled_from(sorted(IDX_TYPES)) | st.integers(0, 255))
    ndim = draw(st.integers(1, 4) | st.integers(0, 255))
    dims = draw(st.lists(st.integers(0, 5) | st.integers(0, 2**32 - 1), min_size=min(ndim, 5), max_size=min(ndim, 5)))
    header = magic + bytes([code, ndim]) + b''.join(struct.pack('>I', d) for d in dims)
    n = int(np.prod(dims, dtype=object)) * np.dtype(IDX_TYPES.get(code, '>u1')).itemsize if dims else 0
    if n < 4096: size = n + draw(st.sampled_from([0, 0, 0, -1, 1, -n]) | st.integers(-8, 8))
    else: size = draw(st.integers(0, 64))
    body = draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
    raw = header + body
    if draw(st.integers(0, 4)) == 0: raw = gzip.compress(raw, mtime=0)[:draw(st.integers(0, 1 << 16))]
    return raw


def check_idx(path:Path, raw:bytes):
    t = read_or_refuse(read_idx, path)
    if t is None: return
    if raw[:2] == b'\x1f\x8b': raw = gzip.decompress(raw)
    assert raw[:2] == b'\0\0' and raw[2] in IDX_TYPES and raw[3] > 0, raw[:4]
    shape = struct.unpack(f'>{raw[3]}I', raw[4:4 + 4 * raw[3]])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    want = np.frombuffer(raw, dtype, offset=4 + 4 * raw[3]).reshape(shape)
    assert tuple(t.shape) == shape and t.numpy().tobytes() == want.astype(dtype.newbyteorder('=')).tobytes()


@fuzz('idx')
@given(raw=idx_bytes())
@example(raw=b'')
@example(raw=b'\0\0\x08\x01\0\0\0\0')                                   # an empty 1-D file: valid
@example(raw=b'\0\0\x0d\x02\xff\xff\xff\xff\xff\xff\xff\xff')             # 2**64 floats announced, none given
@example(raw=b'\x1f\x8b\x08\0')                                          # a gzip header, cut short
def test_idx_generated(work, raw):
    p = work/'gen.idx'; p.write_bytes(raw)
    check_idx(p, raw)


def real_idx_files() -> dict:
    "Small well-formed IDX files of each kind the reader knows, plain and gzipped."
    rng = np.random.default_rng(0)
    out = {}
    for code, dt in IDX_TYPES.items():
        shape = (3, 4, 5) if code == 0x08 else (2, 3)
        a = (rng.integers(0, 255, shape) if dt[1] in 'ui' else rng.normal(size=shape)).astype(dt)
        raw = bytes([0, 0, code, a.ndim]) + struct.pack(f'>{a.ndim}I', *a.shape) + a.tobytes()
        out[f'{dt}'] = raw
        out[f'{dt}.gz'] = gzip.compress(raw, mtime=0)
    return out

REAL_IDX = real_idx_files()


def check_idx_mutated(work, name, m):
    p = work/'real.idx'
    p.write_bytes(REAL_IDX[name])
    check_idx(p, REAL_IDX[name])                                          # the file itself reads
    raw = mutate(REAL_IDX[name], *m); p.write_bytes(raw)
    check_idx(p, raw)


@fuzz('idx_mutated')
@given(name=st.sampled_from([n for n in sorted(REAL_IDX) if not n.endswith('.gz')]), m=mutations)
def test_idx_mutated(work, name, m): check_idx_mutated(work, name, m)


@fuzz('idx_mutated')
@given(name=st.sampled_from([n for n in sorted(REAL_IDX) if n.endswith('.gz')]), m=mutations)
@example(name='>f4.gz', m=('flip', 0, [(26, 3)], b''))
def test_idx_mutated_gzip(work, name, m): check_idx_mutated(work, name, m)


# ---------------------------------------------------------------------------------------------------- JSON and configs

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-10**500, 10**500) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)


@fuzz('json')
@given(raw=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                     st.tuples(json_values.map(lambda v: json.dumps(v).encode()), mutations).map(
                         lambda t: mutate(t[0], *t[1])),
                     st.integers(1, 3000).map(lambda n: b'[' * n + b']' * n)))
@example(raw=b'\xff\xfe{')
@example(raw=b'1' * 5000)
@example(raw=b'[' * 100_000)
def test_load_json(work, raw):
    p = work/'x.json'; p.write_bytes(raw)
    v = read_or_refuse(load_json, p)
    if v is not None: assert json.dumps(v) == json.dumps(json.loads(raw.decode('utf-8')))


CONFIG = {'format': 'lepton_nb.classifier', 'format_version': 1, 'arch': 'fast', 'impl': 'torch', 'n_classes': 10,
          'classes': list('abcdefghij'), 'channels': 1, 'size': 28, 'mean': [0.286], 'std': [0.353], 'width': 32,
          'hidden': 128, 'weights_sha256': '0' * 64, 'lepton_nb_version': '0.1.0'}
GAN_CONFIG = {'format': 'lepton_nb.gan', 'format_version': 1, 'nz': 8, 'width': 4, 'channels': 1, 'size': 28,
              'n_classes': 0, 'classes': ['a', 'b'], 'loss': 'ns', 'generator_sha256': '0' * 64,
              'discriminator_sha256': '0' * 64, 'lepton_nb_version': '0.1.0'}


def edited(base:dict, values):
    "Configs near `base`: keys dropped, added, or set to generated JSON values (through a JSON round trip)."
    keys = st.sampled_from(sorted(base)) | st.text(max_size=12)
    edit = st.tuples(st.sampled_from(['set', 'drop']), keys, values)
    def apply(edits):
        cfg = dict(base)
        for how, k, v in edits:
            if how == 'drop': cfg.pop(k, None)
            else: cfg[k] = v
        return json.loads(json.dumps(cfg))
    return st.lists(edit, max_size=4).map(apply) | values


def check_config_case(checker, cfg):
    out = read_or_refuse(checker, cfg, 'config.json')
    assert out is None or out is cfg


# JSON numbers within a float's range: what the checkers must handle today
finite_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)


@fuzz('config')
@given(cfg=edited(CONFIG, finite_json))
@example(cfg={**CONFIG, 'mean': [1e308], 'std': [float('inf')]})
def test_check_config(cfg): check_config_case(lambda c, w: check_config(c, CLASSIFIER, w), cfg)


@fuzz('config')
@given(cfg=edited(CONFIG, json_values))
@example(cfg={**CONFIG, 'mean': [10**400]})
def test_check_config_any_number(cfg): check_config_case(lambda c, w: check_config(c, CLASSIFIER, w), cfg)


@fuzz('gan_config')
@given(cfg=edited(GAN_CONFIG, json_values))
@example(cfg={**GAN_CONFIG, 'nz': 10**400, 'size': -(10**400)})
def test_check_gan_config(cfg): check_config_case(lambda c, w: check_config(c, GAN, w), cfg)


def check_saved_args(work, args):
    (work/'train_args.json').write_text(json.dumps(args))
    read_or_refuse(saved_args, work, 'train_args.json', path=work)


no_breaks = st.characters(blacklist_characters='\n\r')


@fuzz('train_args')
@given(args=st.dictionaries(st.sampled_from(sorted(SAVED_TYPES)) | st.text(no_breaks, max_size=10), json_values,
                            max_size=6) | json_values.filter(lambda v: not isinstance(v, dict)))   # keys: see below
def test_saved_run_options(work, args):
    "train_args.json / gan_args.json of a run folder, read back by --resume (`saved_args`)."
    check_saved_args(work, args)


@fuzz('train_args')
@given(args=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
@example(args={'\n': []})
def test_saved_run_options_any_key(work, args): check_saved_args(work, args)


# ---------------------------------------------------------------------------------------------------- checkpoints

def tiny_learner():
    torch.manual_seed(0)
    dl = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    return Learner(torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)), dl, device='cpu')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    "The bytes of a real checkpoint of a tiny learner."
    p = tmp_path_factory.mktemp('ckpt')/'checkpoint.pt'
    rng = get_rng_states()
    seed_everything(0)                           # the same bytes on every run, so that examples hit the same fields
    save_checkpoint(tiny_learner(), p)
    load_checkpoint(tiny_learner(), p)           # once before the cases: the first load imports what loading needs
    set_rng_states(rng)
    return p.read_bytes()


@pytest.fixture
def rng_kept():
    "A loaded checkpoint sets the random generators: the tests after this one keep theirs."
    st_ = get_rng_states(); yield; set_rng_states(st_)


def check_checkpoint(path:Path):
    learn = tiny_learner()
    read_or_refuse(load_checkpoint, learn, path)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')    # torch's warning on a random "protocol" byte
@fuzz('checkpoint')
@given(raw=st.binary(max_size=512) | st.binary(max_size=256).map(lambda b: b'PK\x03\x04' + b))
@example(raw=b'')
@example(raw=b'\x80\x02}q\x00.')                                         # a pickled empty dict (the legacy format)
def test_checkpoint_random_bytes(work, rng_kept, checkpoint, raw):
    p = work/'random.pt'; p.write_bytes(raw)
    check_checkpoint(p)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@fuzz('checkpoint_mutated')
@given(m=mutations)
@example(m=('flip', 0, [(2967, 7)], b''))        # the sign bit of a word of Python's generator state: OverflowError
def test_checkpoint_mutated(work, rng_kept, checkpoint, m):
    p = work/'mutated.pt'
    p.write_bytes(checkpoint)
    assert read_or_refuse(load_checkpoint, tiny_learner(), p) is not None   # the file itself loads
    p.write_bytes(mutate(checkpoint, *m))
    check_checkpoint(p)


# ---------------------------------------------------------------------------------------------------- images

def real_images() -> dict:
    "Small images of the formats and modes the decoder meets, made with PIL."
    from PIL import Image
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (12, 16), dtype=np.uint8)
    rgb = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    def enc(im, fmt, **kw):
        b = io.BytesIO(); im.save(b, format=fmt, **kw); return b.getvalue()
    frames = [Image.fromarray(grey).convert('P'), Image.fromarray(255 - grey).convert('P')]
    return {'grey.png': enc(Image.fromarray(grey), 'PNG'), 'rgb.png': enc(Image.fromarray(rgb), 'PNG'),
            'rgba.png': enc(Image.fromarray(np.dstack([rgb, grey])), 'PNG'),
            'deep16.png': enc(Image.fromarray(grey.astype(np.uint16) * 257), 'PNG'),
            'palette.png': enc(Image.fromarray(rgb).convert('P'), 'PNG', transparency=0),
            'photo.jpg': enc(Image.fromarray(rgb), 'JPEG', quality=90),
            'grey.jpg': enc(Image.fromarray(grey), 'JPEG', quality=75, progressive=True),
            'still.gif': enc(frames[0], 'GIF'),
            'moving.gif': enc(frames[0], 'GIF', save_all=True, append_images=frames[1:], duration=100, loop=0)}

IMAGES = real_images()
IMAGE_ARGS = st.sampled_from([{}, {'size': None}, {'size': (20, 30), 'channels': 3}, {'channels': None, 'size': 8},
                              {'background': 255}])


def check_image(path:Path, kw:dict):
    t = read_or_refuse(load_image, path, **kw)
    if t is None: return
    assert t.dtype == torch.uint8 and t.ndim == 3 and t.shape[0] in (1, 3, 4), (t.dtype, t.shape)
    size = kw.get('size', 28)
    if size is not None: assert tuple(t.shape[1:]) == ((size, size) if isinstance(size, int) else tuple(size)), t.shape
    if kw.get('channels', 1) is not None: assert t.shape[0] == kw.get('channels', 1), t.shape


@fuzz('image')
@given(name=st.sampled_from(sorted(IMAGES)), m=mutations, kw=IMAGE_ARGS,
       raw=st.none() | st.binary(max_size=300)
       | st.sampled_from([b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff', b'GIF89a']).flatmap(
           lambda magic: st.binary(max_size=200).map(lambda b: magic + b)))
def test_image_damaged(work, name, m, kw, raw):
    p = work/('img' + Path(name).suffix)
    p.write_bytes(IMAGES[name])
    assert read_or_refuse(load_image, p, **kw) is not None, name          # the file itself decodes
    p.write_bytes(mutate(IMAGES[name], *m) if raw is None else raw)
    check_image(p, kw)


# file names a folder of images may hold: spaces, accents, emoji, a leading dash or dot, bytes that are not UTF-8
# (Python keeps them as surrogate escapes), and names that are not images at all
names = st.text(st.characters(blacklist_categories=('Cs',), blacklist_characters='/\0')
                | st.sampled_from(['\udcff', '\udc80']), min_size=1, max_size=40).filter(
                    lambda s: s not in ('.', '..') and len(os.fsencode(s)) < 250)


@fuzz('image_names')
@given(name=names, image=st.sampled_from(sorted(IMAGES)),
       kind=st.sampled_from(['file', 'file', 'missing', 'folder', 'fifo', 'dangling_link', 'link', 'empty']))
@example(name='-.png', image='rgb.png', kind='file')
@example(name='\udcff\udcfe.jpg', image='photo.jpg', kind='file')
def test_image_odd_names(work, name, image, kind):
    d = work/'names'; d.mkdir(exist_ok=True)
    p = d/name
    for q in d.iterdir():                                               # the previous case's file
        if q.is_dir() and not q.is_symlink(): q.rmdir()
        else: q.unlink()
    if kind == 'file': p.write_bytes(IMAGES[image])
    elif kind == 'folder': p.mkdir()
    elif kind == 'fifo': os.mkfifo(p)
    elif kind == 'dangling_link': p.symlink_to(d/'nowhere')
    elif kind == 'link': (work/'target.img').write_bytes(IMAGES[image]); p.symlink_to(work/'target.img')
    elif kind == 'empty': p.write_bytes(b'')
    t = read_or_refuse(load_image, p, path=p)
    assert (t is not None) == (kind in ('file', 'link')), (kind, t)


# ---------------------------------------------------------------------------------------------------- lepton argv

def parser_words():
    "Every sub-command and option name of `lepton`, from its parser."
    import argparse
    words, todo = set(), [cli.build_parser()]
    while todo:
        p = todo.pop()
        for a in p._actions:
            words.update(a.option_strings)
            if isinstance(a, argparse._SubParsersAction): words.update(a.choices); todo.extend(a.choices.values())
    return sorted(words)

WORDS = parser_words()
values = st.sampled_from(['0', '1', '-1', '2', '3', '28', '0.5', '1e999', '-1e999', 'nan', 'inf', 'auto', '', ' ',
                          '-', '--', '9' * 5000, '0x10', '1_000', '٣', 'fast', 'seed', 'cpu', 'cuda', 'mps', 'cuda:7',
                          'x.png'])
printable = st.text(string.printable.replace('\n', '').replace('\r', '').replace('\x0b', '').replace('\x0c', ''),
                    max_size=12)


@pytest.fixture(scope='module')
def stub_parser():
    """`lepton`'s parser with every command's function replaced by one that records its arguments and does nothing
    (built once: a parse does not change the parser), and the list of what ran."""
    import argparse
    parser, todo, ran = cli.build_parser(), [], []
    todo.append(parser)
    while todo:
        p = todo.pop()
        if p.get_default('func'): p.set_defaults(func=lambda args: ran.append(args))
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction): todo.extend(a.choices.values())
    return parser, ran


def run_main(argv:list):
    out, err = io.StringIO(), io.StringIO()
    with time_limit(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = cli.main(argv)
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()


def check_argv(monkeypatch, stub_parser, argv):
    parser, ran = stub_parser
    monkeypatch.setattr(cli, 'build_parser', lambda: parser)
    ran.clear()
    rc, out, err = run_main(argv)
    if rc == 0: assert ran or out.startswith(('usage:', 'lepton_nb ')), (argv, out[:200])   # a parse, --help, --version
    else:
        assert rc == 2 and not ran, (argv, rc)
        if err: assert one_line(err.rstrip('\n')) and err.startswith('lepton') and 'error:' in err, (argv, err)
        else: assert out.startswith('usage:'), (argv, out[:200])           # `lepton` alone: the help


@fuzz('cli')
@given(argv=st.lists(st.sampled_from(WORDS) | values | printable, max_size=8))
@example(argv=[])
@example(argv=['train', '--epochs', '9' * 5000])
@example(argv=['gan', 'sample', '--n', '1e999'])
@example(argv=['--ver'])
def test_cli_argv(monkeypatch, stub_parser, argv): check_argv(monkeypatch, stub_parser, argv)


@fuzz('cli')
@given(argv=st.lists(st.sampled_from(WORDS) | st.text(no_breaks, max_size=12), max_size=6))
def test_cli_argv_any_text(monkeypatch, stub_parser, argv): check_argv(monkeypatch, stub_parser, argv)


@fuzz('cli')
@given(argv=st.lists(st.sampled_from(WORDS) | st.text(max_size=12), max_size=6))
@example(argv=['data', 'a\nb'])
def test_cli_argv_line_breaks(monkeypatch, stub_parser, argv): check_argv(monkeypatch, stub_parser, argv)


# ------------------------------------------------------------------------------------------ found by the long lane
# (scripts/fuzz_long.py, `make fuzz`): kept here as regression cases (fixed in 05_data's read_idx and decoder, and in
# 08_resilience's load_checkpoint).

@pytest.mark.parametrize('raw', [b'\0\0\x0b\x04\xe9\xc7\xc8e{\xb9\xbd1\0\0\0\x02\0\0\0\0',
                                 b'\0\0\x0b\x04\0\0\0\0\x0e\xf4\xfb*\x1b\xe8\xd7PM\xcf\x9d\xbb'])
def test_idx_empty_with_huge_dims(work, raw):
    p = work/'empty_huge.idx'; p.write_bytes(raw)
    try: check_idx(p, raw)
    except ValueError as e: raise AssertionError(f'ValueError: {e}') from None


def load_image_with_memory_bound(path:Path, headroom:int=1 << 30) -> str:
    "load_image in a forked child whose address space may grow by `headroom`: 'ok', 'refused' or the exception's name."
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            vm = int(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmSize:'))) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
            try: load_image(path, size=(20, 30), channels=3); out = 'ok'
            except LeptonError: out = 'refused'
            except BaseException as e: out = type(e).__name__
        except BaseException as e: out = f'setup: {type(e).__name__}'
        os.write(w, out.encode()); os._exit(0)
    os.close(w)
    with os.fdopen(r) as f: out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='reads VmSize from /proc')
def test_image_chunk_length_under_a_memory_bound(work):
    m = ('flip', 556188, [(141553, 7), (978183, 2), (584106, 0), (161198, 0), (873351, 7), (618095, 0), (777002, 7),
                          (642756, 5)], b'')
    p = work/'chunk.png'; p.write_bytes(mutate(IMAGES['deep16.png'], *m))
    assert load_image_with_memory_bound(p) in ('ok', 'refused')


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_checkpoint_optimizer_state_a_list(work, rng_kept, checkpoint):
    "The long lane's case: a flipped bit in the pickle made `opt['state']` an empty list (rebuilt here field-wise)."
    p = work/'opt_list.pt'; p.write_bytes(checkpoint)
    st = torch.load(p, weights_only=True)
    st['opt']['state'] = []
    torch.save(st, p)
    check_checkpoint(p)
