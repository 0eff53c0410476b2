"`lepton train / evaluate / predict / bench` end to end: folders with bad files, kill and resume, bad arguments."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import BIN, assert_one_line_error, last_json, lepton, lepton_here
import lepton_nb.data as D
from lepton_nb.cnn import export_image_folder

CLASSES = ['Trouser', 'Sneaker', 'Bag']

@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    "train/ and val/ folders of real Fashion-MNIST PNGs (three classes) with bad files mixed in, and two new images."
    root = tmp_path_factory.mktemp('imgs')
    fm = D.load_fashion_mnist(cache=False)
    export_image_folder(fm, root/'train', CLASSES, 200)
    export_image_folder(fm, root/'val', CLASSES, 60, split='valid')
    (root/'train'/'Bag'/'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated jpeg')
    (root/'train'/'Sneaker'/'notes.png').write_text('not an image')
    sneaker = fm.x_valid[torch.nonzero(fm.y_valid == 7)[100, 0], 0].numpy()
    Image.fromarray(sneaker).resize((64, 64)).convert('RGB').save(root/'sneaker.jpg', quality=90)
    trouser = fm.x_valid[torch.nonzero(fm.y_valid == 1)[100, 0], 0].numpy()
    Image.fromarray(trouser).resize((40, 40)).convert('LA').save(root/'trouser.png')
    return root

def test_train_predict_evaluate_on_folders(folders, cache, tmp_path):
    out = tmp_path/'run'
    r = lepton('train', '--data', folders/'train', '--val', folders/'val', '--epochs', '4', '--batch-size', '64',
               '--width', '16', '--out', out, '--json')
    assert r.returncode == 0, r.stderr
    m = last_json(r.stdout)
    keys = ('test_accuracy', 'precision_macro', 'recall_macro', 'f1_macro', 'epochs', 'train_seconds', 'device', 'seed')
    for k in keys: assert k in m, k
    assert m['test_accuracy'] > 0.95 and m['n_test'] == 180 and m['n_train'] == 600
    assert json.loads((out/'metrics.json').read_text())['test_accuracy'] == m['test_accuracy']
    for f in ('model.safetensors', 'config.json', 'metrics.json', 'confusion.png', 'curves.png', 'predictions.png',
              'run_card.json'):
        assert (out/f).is_file() and (out/f).stat().st_size > 0, f
    card = json.loads((out/'run_card.json').read_text())
    assert card['seed'] == 0 and card['device'] == 'cpu' and card['data_hash']
    # predict: a JPEG and a PNG of other sizes and modes
    r = lepton('predict', out, folders/'sneaker.jpg', folders/'trouser.png', '--top-k', '2', '--plot', tmp_path/'p.png',
               '--json')
    assert r.returncode == 0, r.stderr
    preds = last_json(r.stdout)['predictions']
    assert [p['label'] for p in preds] == ['Sneaker', 'Trouser']
    assert all(len(p['top_k']) == 2 and 0 < p['probability'] <= 1 for p in preds)
    assert (tmp_path/'p.png').stat().st_size > 1000
    # predict on a folder: every file under it, an unreadable one listed and left out, the rest labelled
    r = lepton('predict', out, folders/'train'/'Bag', '--json')
    assert r.returncode == 0, r.stderr
    res = last_json(r.stdout)
    assert len(res['predictions']) == 200
    assert [s['file'] for s in res['skipped']] == [str(folders/'train'/'Bag'/'broken.jpg')]
    assert f"skipped {folders/'train'/'Bag'/'broken.jpg'}: " in r.stderr and 'note: the model knows' not in r.stderr
    assert sum(p['label'] == 'Bag' for p in res['predictions']) > 150   # (4 epochs of a small model)
    # evaluate on the val folder gives the accuracy train reported (same model, same images, same test-time flips)
    r = lepton('evaluate', out, '--data', folders/'val', '--json')
    assert r.returncode == 0, r.stderr
    assert abs(last_json(r.stdout)['test_accuracy'] - m['test_accuracy']) < 1e-9

def test_bad_input_around_a_run_is_one_line(folders, cache, tmp_path):
    """Overlapping --val, a --plot that is not a new PNG, an unwritable place, a damaged train_args.json, a config that
    asks for more than its weights file holds, an interrupted run given again without --resume: each a one-line error,
    nothing lost."""
    assert_one_line_error(lepton_here('data', '--data', folders/'train', '--val', folders/'train'), 'overlap')
    assert_one_line_error(lepton_here('data', '--data', folders, '--val', folders/'val'), 'overlap')
    assert_one_line_error(lepton_here('data', '--data', '~no-such-user-here/x'), 'unknown user')
    out = tmp_path/'run'
    r = lepton('train', '--data', folders/'train', '--val', folders/'val', '--epochs', '1', '--batch-size', '64',
               '--width', '8', '--out', out, '--json')
    assert r.returncode == 0, r.stderr
    umask = os.umask(0o022); os.umask(umask)
    assert (out/'model.safetensors').stat().st_mode & 0o777 == 0o666 & ~umask  # the mode a plain open gives, not 0600
    script = tmp_path/'mine.py'; script.write_text('print(1)\n')
    for plot, msg in ((script, 'must end in .png'), (tmp_path, 'must end in .png'),
                      (tmp_path/'new.png'/'x.png', 'no such folder'),
                      (Path('/proc/lepton-test.png'), 'cannot write a file in /proc')):
        assert_one_line_error(lepton_here('predict', out, folders/'sneaker.jpg', '--plot', plot), msg)
    assert script.read_text() == 'print(1)\n'
    # an interrupted run (a checkpoint and no final metrics) is not started over without --resume
    saved = {f: (out/f).read_bytes() for f in ('checkpoint.pt', 'train_args.json')}
    (out/'metrics.json').unlink()
    assert_one_line_error(lepton_here('train', '--data', folders/'train', '--epochs', '1', '--out', out),
                          'interrupted run')
    assert all((out/f).read_bytes() == b for f, b in saved.items())
    args = json.loads(saved['train_args.json'])
    # --resume works from anywhere
    assert Path(args['data']).is_absolute() and args['data'] == str(folders.resolve()/'train')
    for bad in ('[1]', json.dumps({**args, 'lr': 'x'}), json.dumps({**args, 'epochs': True})):
        (out/'train_args.json').write_text(bad)
        assert_one_line_error(lepton_here('train', '--resume', '--out', out), 'train_args.json')
    cfg = json.loads((out/'config.json').read_text())
    (out/'config.json').write_text(json.dumps({**cfg, 'size': 512, 'width': 512, 'hidden': 8192}))
    # before any allocation
    assert_one_line_error(lepton_here('predict', out, folders/'sneaker.jpg'), 'model.safetensors')

def test_run_folders_are_not_replaced_or_mixed(folders, cache, tmp_path):
    """A finished run is not replaced without --overwrite; a folder of the other command (train, gan) is refused by
    either one; --resume keeps the run's data; a folder holding train/ and val/ is not taken for two classes; unknown
    options are named by the sub-command; files that cannot be read are noted, not dropped in silence."""
    out = tmp_path/'run'
    common = ['--data', folders/'train', '--val', folders/'val', '--epochs', '1', '--batch-size', '64', '--width', '8',
              '--out', out]
    r = lepton('train', *common)
    assert r.returncode == 0, r.stderr
    assert 'note: 2 file(s) of the data are left out, unreadable or outside' in r.stderr
    assert f'lepton data --data {folders/"train"}' in r.stderr
    assert 'test accuracy' in r.stdout and '(with flip averaging)' in r.stdout
    weights = (out/'model.safetensors').read_bytes()
    assert_one_line_error(lepton_here('train', *common), 'finished run (model.safetensors)')
    assert (out/'model.safetensors').read_bytes() == weights
    assert_one_line_error(lepton_here('gan', '--data', folders/'train', '--epochs', '1', '--out', out),
                          'holds a run of lepton train')
    assert_one_line_error(lepton_here('gan', 'sample', out), 'must be a folder of lepton gan')
    assert_one_line_error(lepton_here('train', '--resume', '--out', out, '--data', folders/'val'),
                          "differs from the run's own")
    assert_one_line_error(lepton_here('train', '--resume', '--out', out, '--width', '16'), "--width 16 differs")
    assert_one_line_error(lepton_here('train', '--resume', '--out', out, '--lr', '0.5'),
                          "differs from the run's own (the default)")
    assert_one_line_error(lepton_here('train', '--resume', '--out', out, '--val', folders/'train'),
                          "differs from the run's own")
    # the fast recipe's width depends on the budget (16 under 300 s on the CPU): the first fixes it
    short = tmp_path/'short'
    assert lepton_here('train', '--data', folders/'train', '--time-budget', '1', '--batch-size', '64', '--out',
                       short).returncode == 0
    assert json.loads((short/'train_args.json').read_text())['width'] == 16
    r = lepton_here('train', '--resume', '--out', short, '--time-budget', '2')
    assert r.returncode == 0, r.stderr
    (out/'checkpoint.pt').write_bytes(b'the replaced run'); (out/'metrics.json').write_text('{}')
    r = lepton_here('train', *common, '--overwrite')            # the replaced run's checkpoint and metrics go first
    assert r.returncode == 0, r.stderr
    assert (out/'checkpoint.pt').read_bytes() != b'the replaced run' and json.loads((out/'metrics.json').read_text())
    # a GAN run's folder, as far as the check goes
    gan = tmp_path/'gan'; gan.mkdir(); (gan/'gan_args.json').write_text('{}')
    for cmd in (('predict', gan, folders/'sneaker.jpg'), ('evaluate', gan), ('train', *common[:-1], gan)):
        assert_one_line_error(lepton_here(*cmd), 'holds a run of lepton gan')
    assert 'lepton gan sample' in lepton_here('predict', gan, folders/'sneaker.jpg').stderr
    r = lepton_here('predict', out, folders/'sneaker.jpg', '--top-k', '5')
    assert r.returncode == 0 and 'note: the model knows 3 classes, so --top-k 5 shows all of them' in r.stderr, r.stderr
    assert_one_line_error(lepton_here('train', '--data', folders, '--epochs', '1'), 'look like splits of a data set')
    r = lepton('train', '--bogus')
    assert_one_line_error(r, 'unrecognized arguments: --bogus'); assert r.stderr.startswith('lepton train: error:')
    r = lepton_here('gan', 'sample', gan, '--bogus')
    assert_one_line_error(r, 'unrecognized arguments'); assert r.stderr.startswith('lepton gan sample: error:')

def test_options_a_run_will_not_use_are_noted():
    "Options that would be silently ignored get a note line each; nothing is refused for them."
    from lepton_nb.cli import _unused_options, build_parser
    notes = lambda *a: _unused_options(build_parser().parse_args(['train', *a]))
    assert notes('--data', 'photos/train', '--val', 'photos/val') == [] and notes('--width', '8') == []
    assert notes('--model', 'seed', '--width', '8') == ["--width is the fast model's; the seed model has the "
                                                        "article's sizes"]
    assert notes('--data', 'photos/train', '--val', 'photos/val', '--valid-pct',
                 '0.3') == ["--valid-pct is not used: --val gives the validation images"]
    assert notes('--size', '64') == notes('--channels', '3') == ["--size and --channels are for image folders: "
                                                                 "Fashion-MNIST stays 28x28 grey"]
    assert notes('--data', 'photos/train', '--size', '64') == [] and notes('--resume', '--size', '64') == []
    assert notes('--watch', 'accuracy') == ["--watch is early stopping's: it is not used without --patience"]
    assert notes('--watch', 'accuracy', '--patience', '2') == notes('--resume', '--watch', 'accuracy') == []
    gan = lambda *a: _unused_options(build_parser().parse_args(['gan', *a]))   # lepton gan notes the data options alike
    assert gan('--size', '64') == ["--size and --channels are for image folders: Fashion-MNIST stays 28x28 grey"]
    assert gan('--data', 'x', '--val', 'y', '--valid-pct', '0.3') == ["--valid-pct is not used: --val gives the "
                                                                      "validation images"]
    assert gan('--data', 'x', '--size', '32', '--width', '16') == []

def test_a_class_missing_from_the_held_out_images_is_named(folders, cache, tmp_path):
    """--val without one of the classes: the class's figures are n/a (null), the summary says so and gives both
    macro F1s."""
    (tmp_path/'val').mkdir()
    for c in CLASSES[:2]: os.symlink(folders/'val'/c, tmp_path/'val'/c)
    r = lepton('train', '--data', folders/'train', '--val', tmp_path/'val', '--model', 'seed', '--epochs', '1',
               '--out', tmp_path/'run', '--json')
    assert r.returncode == 0, r.stderr
    m = last_json(r.stdout)
    assert m['absent_classes'] == ['Bag'] and m['per_class']['Bag']['recall'] is None
    assert m['per_class']['Bag']['support'] == 0
    assert m['per_class']['Trouser']['support'] == 60 and m['f1_macro_present'] > m['f1_macro']
    assert m['evaluated_on'] == 'the 120 images of the validation folder'
    assert "note: the held-out images hold no 'Bag' (1 of 3 classes)" in r.stderr
    assert '600 train / 120 held-out images, 3 classes, 28x28 grey -> ' in r.stderr, r.stderr
    assert "over the 2 classes present" in r.stderr and 'after 1 epoch,' in r.stderr   # --json: the lines go there

def test_missing_glyphs_are_one_warning_line(capsys):
    """matplotlib warns once per character and plot when a class name has letters its font lacks: the command says it
    once."""
    from lepton_nb.cli import _one_line_warnings
    passed = []
    show = _one_line_warnings('train', lambda *a: passed.append(a[0]))
    for ch in '靴鞋靴':
        show(UserWarning(f'Glyph {ord(ch)} ({ch}) missing from font(s) DejaVu Sans.'), UserWarning, 'plot.py', 1)
    show(UserWarning('something else'), UserWarning, 'x.py', 2)
    err = capsys.readouterr().err
    assert err.count("lepton train: warning: the plots' font lacks some characters") == 1 and 'Glyph' not in err, err
    assert [str(m) for m in passed] == ['something else']

def test_evaluate_repeats_the_training_evaluation(folders, cache, tmp_path):
    "The seed recipe is evaluated without flips and bf16: `lepton evaluate` reads that from config.json and agrees."
    out = tmp_path/'seed'
    r = lepton('train', '--data', folders/'train', '--val', folders/'val', '--model', 'seed', '--epochs', '1', '--out',
               out, '--json')
    assert r.returncode == 0, r.stderr
    m = last_json(r.stdout)
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['tta'] is False and cfg['amp'] is False and m['tta'] is False
    r = lepton('evaluate', out, '--data', folders/'val', '--json')
    assert r.returncode == 0, r.stderr
    e = last_json(r.stdout)
    assert e['tta'] is False and abs(e['test_accuracy'] - m['test_accuracy']) < 1e-9
    assert 'flip averaging off' in r.stderr   # (--json: the report is on standard error)
    r = lepton('evaluate', out, '--data', folders/'val', '--tta', '--json')     # asked for: flips on
    assert r.returncode == 0 and last_json(r.stdout)['tta'] is True
    # a config written before the settings were recorded: the recipe's own (seed: no flips)
    del cfg['tta'], cfg['amp']; (out/'config.json').write_text(json.dumps(cfg))
    r = lepton('evaluate', out, '--data', folders/'val', '--json')
    assert r.returncode == 0 and abs(last_json(r.stdout)['test_accuracy'] - m['test_accuracy']) < 1e-9

def test_resume_picks_the_latest_unfinished_run(tmp_path, monkeypatch):
    "`--resume` without --out continues the newest interrupted run (of --data/--model when given), not a finished one."
    from types import SimpleNamespace
    from lepton_nb.artifacts import run_dir
    from lepton_nb.core import LeptonError, save_json
    monkeypatch.chdir(tmp_path)
    def run(name, model, finished, data='fashion-mnist', args='train_args.json'):
        d = Path('runs')/name; d.mkdir(parents=True)
        save_json({'data': data, 'model': model}, d/args)
        (d/'checkpoint.pt').write_bytes(b'x'); time.sleep(0.02)
        if finished: (d/'metrics.json').write_text('{}'); time.sleep(0.02)
        return d
    a = run('fashion-mnist-fast', 'fast', False)                           # interrupted
    run('fashion-mnist-fast-2', 'fast', True)                              # newer, finished
    run('fashion-mnist-gan', None, False, args='gan_args.json')            # newer, interrupted, but a GAN run
    resume = lambda **k: run_dir(SimpleNamespace(out=None, resume=True, **{'data': None, 'model': None, **k}))
    assert resume() == resume(model='fast') == resume(data='fashion-mnist') == a
    c = run('photos-seed', 'seed', False, data='photos/train')  # the newest interrupted run: found without options
    assert resume() == resume(model='seed') == resume(data='photos/train') == resume(data='photos') == c
    assert resume(data='fashion-mnist') == resume(model='fast') == a
    assert run_dir(SimpleNamespace(out=None, resume=True, data=None, model=None),
                   kind='gan') == Path('runs/fashion-mnist-gan')
    (a/'metrics.json').write_text('{}')                                    # now every fast run has finished
    with pytest.raises(LeptonError, match='every lepton train run with --model fast in runs/ finished'):
        resume(model='fast')
    with pytest.raises(LeptonError, match='no checkpoint of a lepton train run on shoes'): resume(data='shoes')
    assert run_dir(SimpleNamespace(out=None, resume=False, data='photos/train',
                                   model='fast')) == Path('runs/photos-fast')

def test_runs_started_at_once_get_a_folder_each(tmp_path, monkeypatch):
    "Two runs that both picked the free default name while loading their data: the first to create it has it."
    from types import SimpleNamespace
    from lepton_nb.artifacts import claim_run_dir, run_dir
    from lepton_nb.core import LeptonError
    monkeypatch.chdir(tmp_path)
    args = SimpleNamespace(out=None, resume=False, data=None, model='fast')
    first, second = run_dir(args), run_dir(args)
    assert first == second == Path('runs/fashion-mnist-fast')
    pick = lambda: run_dir(args)
    assert claim_run_dir(first, pick) == (Path('runs/fashion-mnist-fast'), True)
    assert claim_run_dir(second, pick) == (Path('runs/fashion-mnist-fast-2'), True)
    assert run_dir(args) == Path('runs/fashion-mnist-fast-3')  # a folder there, whatever it holds, is not a default
    assert claim_run_dir(Path('mine'), None) == (Path('mine'), True)
    assert claim_run_dir(Path('mine'), None) == (Path('mine'), False)
    Path('file').write_text('x')
    with pytest.raises(LeptonError, match='exists and is not a folder'): claim_run_dir(Path('file'), None)
    os.symlink('/no/such/place', 'runs/photos-fast')                     # a broken link is taken too, and cannot loop
    assert run_dir(SimpleNamespace(out=None, resume=False, data='photos', model='fast')) == Path('runs/photos-fast-2')
    with pytest.raises(LeptonError, match='cannot create the run folder'):
        claim_run_dir(Path('runs/photos-fast'), lambda: Path('runs/photos-fast'))

def test_a_resumed_run_checks_its_data(tmp_path, capsys):
    "A data folder that moved is named; one given at a new place must have the run's classes; changed files get a note."
    from lepton_nb.artifacts import check_resumed_data, merge_resume_args, run_facts
    from lepton_nb.cli import build_parser
    from lepton_nb.core import LeptonError, save_json
    from lepton_nb.data import ImageData
    x, y = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    data = lambda classes, x=x: ImageData(x, y, x, y, classes, source='moved')
    save_json({'data': str(tmp_path/'gone'), 'model': 'seed', **run_facts(data(['cats', 'dogs']))},
              tmp_path/'train_args.json')
    with pytest.raises(LeptonError, match="gone: the run's data folder is not there any more: if it moved, resume "
                                          "with --data NEW_PLACE"):
        merge_resume_args(build_parser().parse_args(['train', '--resume']), tmp_path)
    args = build_parser().parse_args(['train', '--resume', '--data', str(tmp_path/'moved')])
    merge_resume_args(args, tmp_path)                                      # a new place is taken ...
    assert args.data == str(tmp_path/'moved')
    with pytest.raises(LeptonError, match='moved has the classes dogs, kittens; the run started on cats, dogs'):
        check_resumed_data(tmp_path, data(['dogs', 'kittens']), 'train')   # ... if it holds the run's classes
    check_resumed_data(tmp_path, data(['cats', 'dogs']), 'train')                  # the same images: no note
    assert capsys.readouterr().err == ''
    check_resumed_data(tmp_path, data(['cats', 'dogs'], x + 1), 'train')                  # edited images: a note
    assert 'note: the data changed since the run started' in capsys.readouterr().err
    save_json({'data': 'fashion-mnist', 'model': 'seed'}, tmp_path/'train_args.json')  # Fashion-MNIST never "moved"
    with pytest.raises(LeptonError, match='differs from the run'):
        merge_resume_args(build_parser().parse_args(['train', '--resume', '--data', str(tmp_path/'photos')]), tmp_path)

def test_resume_restores_every_saved_option(tmp_path):
    "Options not given again on --resume come from train_args.json, switches like --tensorboard included."
    from lepton_nb.artifacts import merge_resume_args
    from lepton_nb.cli import build_parser
    from lepton_nb.core import save_json
    save_json({'model': 'seed', 'epochs': 4, 'tensorboard': True, 'seed': 3}, tmp_path/'train_args.json')
    args = build_parser().parse_args(['train', '--resume', '--epochs', '6'])
    merge_resume_args(args, tmp_path)
    assert (args.model, args.epochs, args.tensorboard, args.seed, args.impl) == ('seed', 6, True, 3, 'torch')
    # the budget is one thing: given again in either form, it replaces the saved one, which would otherwise still
    # stop it
    save_json({'model': 'seed', 'time_budget': 20}, tmp_path/'train_args.json')
    args = build_parser().parse_args(['train', '--resume', '--epochs', '50']); merge_resume_args(args, tmp_path)
    assert (args.epochs, args.time_budget) == (50, None)
    save_json({'model': 'seed', 'epochs': 5}, tmp_path/'train_args.json')
    args = build_parser().parse_args(['train', '--resume', '--time-budget', '30']); merge_resume_args(args, tmp_path)
    assert (args.epochs, args.time_budget) == (None, 30)
    args = build_parser().parse_args(['train', '--resume']); merge_resume_args(args, tmp_path)
    assert (args.epochs, args.time_budget) == (5, None)                     # not given: the saved budget
    args = build_parser().parse_args(['train'])                            # a new run: the switch is off unless given
    assert args.tensorboard is None and build_parser().parse_args(['train', '--tensorboard']).tensorboard is True
    # early stopping's patience may change on resume, but it cannot be turned on: it holds out training images
    from lepton_nb.core import LeptonError
    with pytest.raises(LeptonError, match='started without early stopping'):
        merge_resume_args(build_parser().parse_args(['train', '--resume', '--patience', '2']), tmp_path)
    save_json({'model': 'seed', 'patience': 3, 'watch': 'valid_loss'}, tmp_path/'train_args.json')
    args = build_parser().parse_args(['train', '--resume', '--patience', '5'])
    merge_resume_args(args, tmp_path)
    assert args.patience == 5 and args.watch == 'valid_loss'
    with pytest.raises(LeptonError, match='--watch accuracy differs'):   # its best loss is no best accuracy
        merge_resume_args(build_parser().parse_args(['train', '--resume', '--watch', 'accuracy']), tmp_path)

def test_early_stopping_watches_held_out_training_images(folders, cache, tmp_path):
    "--patience trains on nine tenths of each class, watches the rest, and still reports the held-out split's accuracy."
    r = lepton('train', '--data', folders/'train', '--val', folders/'val', '--epochs', '30', '--patience', '1',
               '--lr', '0.05', '--batch-size', '64', '--width', '8', '--out', tmp_path/'es', '--json')
    assert r.returncode == 0, r.stderr
    m = last_json(r.stdout)
    assert (m['n_train'], m['n_test']) == (540, 180) and '540 train (+60 held out for early stopping) / 180' in r.stderr
    es, h = m['early_stopping'], m['history']
    assert '60 training images held out' in es['watched'] and es['patience'] == 1
    # at a high learning rate on 540 images the watched loss soon rises: the run stops and goes back to the best epoch
    assert len(h) < 30 and es['weights_kept'] == es['best_epoch'] < len(h), (es, len(h))
    assert es['best_valid_loss'] == min(e['valid_loss'] for e in h) and 'were kept' in m['stop_reason']

def test_a_run_that_fails_before_it_starts_leaves_no_folder(folders, cache, tmp_path, monkeypatch, capsys):
    """An error found once the run folder and its settings are written (a missing package, say) removes what this
    command wrote: no run folder with settings and nothing else is left behind. A folder that was there is kept."""
    import lepton_nb.cnn, lepton_nb.gan_run
    from lepton_nb.cli import main
    from lepton_nb.core import LeptonError
    def refuse(*a, **k): raise LeptonError('refused for the test')
    monkeypatch.setattr(lepton_nb.cnn, 'train_classifier', refuse)
    monkeypatch.setattr(lepton_nb.gan_run, 'train_gan', refuse)
    data = ['--data', str(folders/'train'), '--val', str(folders/'val')]
    for cmd in (['train'], ['gan']):
        assert main([*cmd, *data, '--out', str(tmp_path/'new')]) == 2
        assert 'refused for the test' in capsys.readouterr().err and not (tmp_path/'new').exists(), cmd
    (tmp_path/'mine').mkdir()
    assert main(['train', *data, '--out', str(tmp_path/'mine')]) == 2
    assert [p.name for p in (tmp_path/'mine').iterdir()] == ['train_args.json']   # the user's folder stays
    monkeypatch.undo()
    try: import tensorboard  # noqa: F401 (the same through the command, when the package is missing)
    except ImportError:
        r = lepton('train', *data, '--epochs', '1', '--tensorboard', '--out', tmp_path/'tb')
        assert_one_line_error(r, 'tensorboard'); assert not (tmp_path/'tb').exists()

def test_interrupted_benchmark_is_one_line(folders, cache, tmp_path):
    """Ctrl-C during a training with no run folder (a benchmark, a metric's classifier) ends the command in one line,
    130."""
    import shutil
    p = subprocess.Popen([shutil.which('lepton', path=str(BIN)) or 'lepton', 'bench', '--only', 'train'], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    try:
        for line in p.stdout:                                # wait until training is under way (its heading is out)
            if line.startswith('train:'): break
        time.sleep(3); p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130, err
    assert 'Traceback' not in err and err.strip().splitlines()[-1].startswith('lepton bench: interrupted'), err

@pytest.mark.parametrize('args,msg', [
    (['train', '--epochs', '-1'], 'at least 1'),
    (['train', '--batch-size', '0'], 'at least 1'),
    (['train', '--lr', 'nan'], 'positive'),
    (['train', '--device', 'tpu', '--epochs', '1'], 'unknown device'),
    (['train', '--data', '/no/such/folder'], 'no such folder'),
    (['train', '--time-budget', '0'], 'positive'),
    (['data', '--size', '4096'], 'at most 512'),
    (['data', '--data', ''], '--data is empty'),
    (['predict', '/no/such/model', 'x.png'], 'not a model folder'),
    (['evaluate', '/no/such/model'], 'not a model folder'),
    (['bench', '--only', 'nothing'], 'unknown benchmark'),
    (['train', '--resume', '--out', '/tmp/lepton-no-such-run'], 'nothing to resume'),
    (['gan', 'sample', '/no/such/model', '--scale', '100'], 'at most 32'),
    (['gan', 'sample', '/no/such/model', '--n', '1000000'], 'at most 100000'),
])
def test_bad_arguments_are_one_line(cache, args, msg):
    assert_one_line_error(lepton_here(*args), msg)  # in this process: the installed command is run by the tests above

def test_a_folder_that_is_no_run_or_holds_splits_is_named(folders, cache, tmp_path):
    "A data folder given as MODEL_DIR, and a folder of train/ and val/ given as a folder of classes, are each named so."
    assert_one_line_error(lepton_here('evaluate', folders/'train'),
                          'not a model folder (expected model.safetensors and config.json')
    (tmp_path/'split').mkdir()
    for s in ('train', 'val'): os.symlink(folders/s, tmp_path/'split'/s)
    from lepton_nb.core import LeptonError
    with pytest.raises(LeptonError, match=r"look like splits of a data set, not classes: give one of them, such as "
                                          r".*split/val"):
        D.scan_image_folder(tmp_path/'split', CLASSES)

@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on a machine without a GPU')
def test_gpu_requested_without_gpu(cache):
    assert_one_line_error(lepton('train', '--device', 'cuda', '--epochs', '1'), 'no CUDA GPU')

def test_single_class_folder_is_refused(cache, tmp_path):
    (tmp_path/'only').mkdir()
    for i in range(5): Image.new('L', (28, 28), i * 40).save(tmp_path/'only'/f'{i}.png')
    assert_one_line_error(lepton('train', '--data', tmp_path, '--epochs', '1'), 'at least 2 classes')

def test_bench_learner_reports_overhead(cache, monkeypatch):
    """`lepton bench --only learner,loader` on 3,000 of the training images (what is checked is what it reports,
    not speed)."""
    from lepton_nb.optimize import subset
    fm = D.load_fashion_mnist(cache=False)
    monkeypatch.setattr(D, 'load_fashion_mnist', lambda *a, **k: subset(fm, 3000, n_valid=500))
    r = lepton_here('bench', '--only', 'learner,loader', '--json')
    assert r.returncode == 0, r.stderr
    b = last_json(r.stdout)
    assert b['plain_loop_s'] > 0 and b['learner_s'] > 0 and 'learner_overhead_pct' in b
    assert b['loader_dataloader_0w_ratio'] > 0

def test_resume_before_the_first_checkpoint_starts_again(folders, cache, tmp_path):
    """A run killed (SIGKILL) before its first checkpoint left only train_args.json: --resume starts it again from the
    beginning with those settings, says so in one line, and ends with the weights of a run never killed, bit for bit."""
    import shutil
    from safetensors.torch import load_file
    args = ['--data', folders/'train', '--val', folders/'val', '--model', 'seed', '--epochs', '1', '--batch-size', '64',
            '--seed', '3']
    r = lepton('train', *args, '--out', tmp_path/'whole', '--json')
    assert r.returncode == 0, r.stderr
    out = tmp_path/'killed'
    p = subprocess.Popen([sys.executable, '-m', 'lepton_nb.cli', 'train', *map(str, args), '--out', str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        t0 = time.monotonic()
        while not (out/'train_args.json').is_file() and p.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.005)
    finally: p.kill(); p.wait()
    assert (out/'train_args.json').is_file()
    for f in out.iterdir():                 # a kill that came late: what the kill would have left, had it come sooner
        if f.name != 'train_args.json': shutil.rmtree(f) if f.is_dir() else f.unlink()
    r = lepton('train', '--resume', '--out', out, '--json')
    assert r.returncode == 0, r.stderr
    assert r.stderr.count('stopped before its first checkpoint: it starts again from the beginning') == 1, r.stderr
    assert json.loads(r.stdout)['epochs'] == 1
    a, b = load_file(out/'model.safetensors'), load_file(tmp_path/'whole'/'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out/'metrics.json').read_text())['test_accuracy'] == \
        json.loads((tmp_path/'whole'/'metrics.json').read_text())['test_accuracy']
    assert_one_line_error(lepton_here('train', '--resume', '--out', tmp_path/'empty'), 'nothing to resume')


# ------------------------------------------------------------------ architectures, pretrained weights, augmentation

def test_the_models_written_out_are_the_registered_ones():
    "The parser lists the architectures without importing torch; they are the ones cnn knows once transfer registers."
    pytest.importorskip('lepton_nb.transfer')
    from lepton_nb.arguments import TRAIN_MODELS
    from lepton_nb.cnn import ARCHS, arch_for
    for m in TRAIN_MODELS: arch_for(m)
    assert set(TRAIN_MODELS) == set(ARCHS)


@pytest.mark.parametrize('args,msg', [
    (['train', '--model', 'resnet50'], "invalid choice: 'resnet50' (choose from 'fast', 'seed', 'resnet18'"),
    (['train', '--augment', 'nonsense'], "unknown augmentation 'nonsense': use none or a comma-separated list of flip"),
    (['train', '--augment', 'flip,none'], "'none' cannot be combined"),
    (['train', '--memory-budget', '-1'], 'must be 0 or more gigabytes'),
    (['train', '--memory-budget', 'lots'], 'expected a number of gigabytes'),
    (['export', '/no/such/run'], '/no/such/run'),
    (['export', 'RUN', '--format', 'tflite'], "invalid choice: 'tflite'"),
])
def test_bad_new_options_are_one_line(cache, args, msg, tmp_path):
    "Each refused before any data is loaded or any folder is made: one line, exit status 2."
    r = lepton_here(*args, cwd=tmp_path)
    assert_one_line_error(r, msg)
    assert r.returncode == 2 and r.stdout == '' and list(tmp_path.iterdir()) == []


def test_the_new_options_are_saved_and_kept_on_resume(tmp_path):
    "--model, --weights, --from and --augment shape the model: a resume keeps them; the memory budget may change."
    from lepton_nb.artifacts import merge_resume_args
    from lepton_nb.cli import build_parser
    from lepton_nb.core import LeptonError, save_json
    save_json({'model': 'resnet18', 'weights': 'imagenet', 'from': None, 'augment': 'flip,crop',
               'memory_budget': 2}, tmp_path/'train_args.json')
    args = build_parser().parse_args(['train', '--resume', '--memory-budget', '0.5'])
    merge_resume_args(args, tmp_path)
    assert (args.model, args.weights, getattr(args, 'from'), args.augment, args.memory_budget) == \
           ('resnet18', 'imagenet', None, 'flip,crop', 0.5)
    for given, msg in ((['--augment', 'flip'], '--augment flip differs'),
                       (['--model', 'mobilenet_v3_small'], '--model mobilenet_v3_small differs'),
                       (['--weights', '/elsewhere/w.safetensors'], '--weights /elsewhere/w.safetensors differs'),
                       (['--from', '/a/run'], '--from /a/run differs')):
        with pytest.raises(LeptonError, match=msg):
            merge_resume_args(build_parser().parse_args(['train', '--resume', *given]), tmp_path)
    save_json({'augment': 3}, tmp_path/'train_args.json')       # a damaged options file is named
    with pytest.raises(LeptonError, match="'augment' has the value 3"):
        merge_resume_args(build_parser().parse_args(['train', '--resume']), tmp_path)


def test_augment_is_recorded_in_the_run_and_its_order_does_not_matter(folders, cache, tmp_path):
    "--augment crop,flip trains with those transforms: config.json and train_args.json say flip,crop (their order)."
    out = tmp_path/'run'
    r = lepton_here('train', '--data', folders/'train', '--val', folders/'val', '--epochs', '1', '--batch-size', '64',
                    '--width', '4', '--augment', 'crop,flip', '--memory-budget', '2', '--out', out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out/'config.json').read_text())['augment'] == ['flip', 'crop']
    assert json.loads((out/'train_args.json').read_text())['augment'] == 'flip,crop'
    r = lepton_here('train', '--resume', '--out', out, '--augment', 'flip,crop', '--epochs', '2',   # the same again;
                    '--memory-budget', '1')                                               # the budget may change
    assert r.returncode == 0 and 'a batch at a time' not in r.stderr, r.stderr
    assert json.loads((out/'train_args.json').read_text())['memory_budget'] == 1
    r = lepton_here('train', '--resume', '--out', out, '--augment', 'flip', '--epochs', '3')
    assert_one_line_error(r, '--augment flip differs')


def test_bad_weights_are_one_line_and_leave_no_run(folders, cache, tmp_path):
    "A weights file of the wrong shapes, or none at all, or a --from folder that holds no run: one line, no folder."
    pytest.importorskip('lepton_nb.transfer')
    from safetensors.torch import save_file
    save_file({'conv1.weight': torch.zeros(3, 3)}, str(tmp_path/'wrong.safetensors'))
    data = ['--data', folders/'train', '--val', folders/'val', '--epochs', '1', '--out', tmp_path/'run']
    for bad in (['--model', 'resnet18', '--weights', tmp_path/'wrong.safetensors'],
                ['--model', 'mobilenet_v3_small', '--weights', tmp_path/'missing.safetensors'],
                ['--model', 'fast', '--from', tmp_path/'no-run']):
        r = lepton_here('train', *data, *bad)
        assert_one_line_error(r)
        assert r.returncode == 2 and not (tmp_path/'run').exists(), (bad, r.stderr)


# ------------------------------------------------------------------ lepton export

def test_export_writes_one_file_and_one_json_document(folders, cache, tmp_path):
    "lepton export RUN: ONNX by default, pt2 on request; --json is one document a pipe reads; a bad --out is one line."
    pytest.importorskip('onnx')
    out = tmp_path/'run'
    r = lepton_here('train', '--data', folders/'train', '--val', folders/'val', '--epochs', '1', '--batch-size', '64',
                    '--width', '4', '--out', out)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(f"'{BIN/'lepton'}' export '{out}' --json | '{sys.executable}' -c "
                       "'import json, sys; d = json.load(sys.stdin); print(d[\"format\"], d[\"path\"])'",
                       shell=True, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"onnx {out/'model.onnx'}", r.stderr
    assert (out/'model.onnx').stat().st_size > 1000
    r = lepton_here('export', out, '--format', 'pt2', '--out', tmp_path/'m.pt2', '--json')
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d['format'], d['path'], d['classes']) == ('pt2', str(tmp_path/'m.pt2'), sorted(CLASSES))
    assert (d['size'], d['channels']) == (28, 1) and (tmp_path/'m.pt2').is_file()
    assert d['inputs'][0]['dtype'] == 'uint8'
    r = lepton_here('export', out, '--format', 'pt2', '--dtype', 'float32', '--out', tmp_path/'f.pt2', '--json')
    assert r.returncode == 0 and json.loads(r.stdout)['inputs'][0]['dtype'] == 'float32', r.stderr
    r = lepton_here('export', out)                               # without --json: one line a person reads
    assert r.returncode == 0 and r.stdout.count('\n') == 1 and r.stdout.startswith(f"wrote {out/'model.onnx'} (onnx)")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path/'a_file').write_text('not a folder')
    for bad in (tmp_path/'a_file'/'m.onnx', '/proc/m.onnx'):      # a folder that cannot hold it
        r = lepton_here('export', out, '--out', bad)
        assert_one_line_error(r); assert r.returncode == 2 and r.stdout == ''
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # the run untouched, no temporary file left


def test_training_starts_from_an_earlier_run_or_a_weights_file(folders, cache, tmp_path):
    "--from RUN trains RUN's network (its --model by default) from its weights; --weights FILE a torchvision network."
    pytest.importorskip('lepton_nb.transfer')
    from safetensors.torch import save_file
    from torchvision.models import mobilenet_v3_small
    data = ['--data', folders/'train', '--val', folders/'val', '--epochs', '1', '--batch-size', '64']
    first, second = tmp_path/'first', tmp_path/'second'
    assert lepton_here('train', *data, '--model', 'seed', '--out', first).returncode == 0
    r = lepton_here('train', *data, '--from', first, '--out', second, '--json')
    assert r.returncode == 0, r.stderr
    assert f"training 'seed' (torch layers) from the weights of {first} on " in r.stderr
    saved = json.loads((second/'train_args.json').read_text())
    assert (saved['model'], saved['from'], saved['weights']) == ('seed', str(first), None)
    assert json.loads(r.stdout)['test_accuracy'] > 0.8
    save_file(mobilenet_v3_small().state_dict(), str(tmp_path/'mnv3.safetensors'))   # a file of the right shapes
    r = lepton_here('train', *data, '--model', 'mobilenet_v3_small', '--weights', tmp_path/'mnv3.safetensors',
                    '--out', tmp_path/'third')
    assert r.returncode == 0, r.stderr
    assert f"from {tmp_path/'mnv3.safetensors'}'s weights" in r.stderr
    assert json.loads((tmp_path/'third'/'config.json').read_text())['arch'] == 'mobilenet_v3_small'


def test_train_reads_a_folder_over_its_memory_budget_from_disk(folders, cache, tmp_path):
    "--memory-budget 0: the images are read from disk a batch at a time, with the same run as in memory."
    data = ['--data', folders/'train', '--val', folders/'val', '--epochs', '1', '--batch-size', '64', '--width', '4']
    runs = {}
    for gb in ('0', '2'):
        r = lepton_here('train', *data, '--memory-budget', gb, '--out', tmp_path/gb, '--json')
        assert r.returncode == 0, r.stderr[-2000:]
        assert ('a batch at a time' in r.stderr) == (gb == '0'), r.stderr
        runs[gb] = json.loads(r.stdout)
    assert runs['0']['test_accuracy'] == runs['2']['test_accuracy']
    args = [json.loads((tmp_path/gb/'train_args.json').read_text()) for gb in ('0', '2')]
    assert args[0]['data_hash'] == args[1]['data_hash'] and args[0]['memory_budget'] == 0
