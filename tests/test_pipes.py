"`lepton` in a pipeline: with --json standard output is one JSON document; --help without torch; exit statuses."
import json, shutil, subprocess, sys
from pathlib import Path

import pytest

from helpers import assert_one_line_error, lepton, lepton_here
from lepton_nb.data import make_messy_folder

TINY = ['--epochs', '1', '--width', '8', '--batch-size', '16']


def strict_json(stdout:str):
    "The one JSON document standard output must hold: strict JSON (no NaN), one line, nothing before or after it."
    assert stdout.endswith('\n') and stdout.count('\n') == 1, stdout[:500]
    def no_constant(c): raise AssertionError(f"{c} is not JSON")
    return json.loads(stdout, parse_constant=no_constant)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    "A tiny folder of three classes of shapes (with unreadable files), a classifier and a GAN trained on it."
    root = tmp_path_factory.mktemp('pipes')
    make_messy_folder(root/'shapes', n_per_class=12)
    env = {'LEPTON_CACHE': str(root/'cache'), 'OMP_NUM_THREADS': '1'}
    return root, env


def test_help_imports_no_torch():
    "Building the parser and printing any help leaves torch (seconds to import) out of the process."
    code = ("import contextlib, io, sys\nfrom lepton_nb.cli import build_parser, main\nbuild_parser()\n"
            "for argv in (['--help'], ['train', '--help'], ['gan', 'sample', '--help'], ['bench', '--help'],\n"
            "             ['export', '--help'], ['train', '--model', 'nonsense']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main(argv)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]', r.stdout


def test_help_lists_the_exit_statuses_and_the_bench_parts():
    from lepton_nb.bench import BENCH_PARTS
    r = lepton_here('--help')
    assert r.returncode == 0
    for line in ('0    done', '1    an unexpected failure', '2    bad input', '130  interrupted'):
        assert line in r.stdout
    r = lepton_here('bench', '--help')
    assert f"parts: {', '.join(BENCH_PARTS)} (" in ' '.join(r.stdout.split())   # the parts, written out, are bench's


def test_every_command_prints_one_json_document(shapes, tmp_path):
    "Each command with --json: exit 0, standard output one strict JSON object, the human lines on standard error."
    root, env = shapes
    data = root/'shapes'
    cases = [
        (['data', '--data', data], lambda d: d['train_size'] > 0 and d['skipped']),
        (['train', '--data', data, *TINY, '--out', tmp_path/'run'], lambda d: 0 <= d['test_accuracy'] <= 1),
        (['evaluate', tmp_path/'run', '--data', data], lambda d: d['n'] > 0 and 'confusion' in d),
        (['predict', tmp_path/'run', data/'circle'], lambda d: len(d['predictions']) >= 12),
        (['gan', '--data', data, *TINY, '--n-eval', '20', '--out', tmp_path/'gan'], lambda d: 'fid' in d),
        (['gan', 'sample', tmp_path/'gan', '--n', '6', '--out', tmp_path/'s.png'], lambda d: d['n'] == 6),
        (['bench', '--only', 'conv'], lambda d: any(k.startswith('conv') for k in d)),
        (['export', tmp_path/'run'], lambda d: d['format'] == 'onnx' and Path(d['path']).stat().st_size > 1000),
    ]
    for args, check in cases:
        r = lepton(*args, '--json', env=env, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        d = strict_json(r.stdout)
        assert isinstance(d, dict) and check(d), (args, r.stdout[:500])
        assert r.stderr.strip(), args                    # the lines a person reads are still printed, elsewhere
    killed = tmp_path/'gan-killed'; killed.mkdir()   # what a kill before the first checkpoint leaves: the options
    shutil.copy(tmp_path/'gan'/'gan_args.json', killed)
    r = lepton('gan', '--resume', '--out', killed, '--json', env=env, cwd=tmp_path)
    assert r.returncode == 0 and 'stopped before its first checkpoint: it starts again' in r.stderr, r.stderr[-2000:]
    assert strict_json(r.stdout)['epochs'] == 1 and (killed/'generator.safetensors').is_file()
    r = lepton('train', '--data', data, *TINY, '--out', tmp_path/'run2', env=env, cwd=tmp_path)   # without --json
    assert r.returncode == 0 and 'test accuracy' in r.stdout and not r.stdout.lstrip().startswith('{')


@pytest.mark.parametrize('args', [
    ['data', '--data', '/no/such/folder'],
    ['train', '--data', '/no/such/folder', '--epochs', '1'],
    ['evaluate', '/no/such/run'],
    ['predict', '/no/such/run', 'x.png'],
    ['gan', '--data', '/no/such/folder', '--epochs', '1'],
    ['gan', 'sample', '/no/such/run'],
    ['bench', '--only', 'nothing'],
    ['export', '/no/such/run'],
    ['train', '--augment', 'nonsense'],
    ['train', '--resume', '--out', '/no/such/run'],
])
def test_errors_with_json_are_one_line_and_no_output(args):
    r = lepton_here(*args, '--json')
    assert_one_line_error(r)
    assert r.returncode == 2 and r.stdout == '', r.stdout


def test_json_is_strict_and_nothing_else_reaches_stdout(monkeypatch):
    "A result holding NaN prints null (jq refuses NaN); a print deep in a command goes to standard error."
    import lepton_nb.cli as cli
    def fake(args):
        print('a table a library printed'); return {'f1': float('nan'), 'n': 3, 'inf': [float('inf')]}
    parser = cli.build_parser()
    parser._subparsers._group_actions[0].choices['data'].set_defaults(func=fake)
    monkeypatch.setattr(cli, 'build_parser', lambda: parser)
    r = lepton_here('data', '--json')
    assert r.returncode == 0 and strict_json(r.stdout) == {'f1': None, 'n': 3, 'inf': [None]}
    assert r.stderr == 'a table a library printed\n'
