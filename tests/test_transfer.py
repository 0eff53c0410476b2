"Transfer learning at the library level: torchvision bodies on a folder, weights from files and runs, and refusals."
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from lepton_nb.core import LeptonError
from lepton_nb.data import get_data
from lepton_nb.cnn import ARCHS, RECIPES, build_model, model_config, predict, train_classifier
from lepton_nb.artifacts import load_model, save_model
from lepton_nb.transfer import FreezeCB, imagenet_state, transfer_setup

def colour_folder(root:Path, colours:dict, n:int=8, size:int=40, mode:str='RGB') -> Path:
    "root/<class>/<i>.png: noisy images around one colour per class."
    g = torch.Generator().manual_seed(len(colours))
    for name, rgb in colours.items():
        (root/name).mkdir(parents=True)
        for i in range(n):
            x = (torch.tensor(rgb).view(3, 1, 1) + torch.randint(-40, 41, (3, size, size), generator=g)).clamp(0, 255)
            Image.fromarray(x.to(torch.uint8).permute(1, 2, 0).numpy()).convert(mode).save(root/name/f'{i}.png')
    return root

def refused(f, contains:str) -> str:
    "The one-line LeptonError that `f` raises."
    with pytest.raises(LeptonError) as e: f()
    msg = str(e.value)
    assert '\n' not in msg and contains in msg, msg
    return msg

@pytest.fixture
def rgb(tmp_path, cache):
    return get_data(colour_folder(tmp_path/'rgb', {'red': (200, 40, 40), 'blue': (40, 40, 200)}), size=64,
                    progress=False, valid_pct=0.25)

def test_registered_on_import():
    for a in ('resnet18', 'mobilenet_v3_small'):
        assert a in ARCHS and RECIPES[a]['arch'] == a and RECIPES[a]['tta'] is False

def test_resnet18_weights_none_trains_saves_loads_predicts(rgb, tmp_path):
    assert transfer_setup('resnet18', 'none', None, rgb) == {}
    learn, m = train_classifier(rgb, 'resnet18', epochs=1, bs=6, out=tmp_path/'run', progress=False)
    assert m['n_test'] == len(rgb.y_valid) and 0 <= m['test_accuracy'] <= 1
    net, cfg = load_model(tmp_path/'run', 'cpu')
    assert cfg['arch'] == 'resnet18' and cfg['size'] == 64 and cfg['channels'] == 3
    files = sorted((tmp_path/'rgb').rglob('*.png'))[:3]
    res = predict(tmp_path/'run', files, device='cpu')
    assert [r['file'] for r in res] == list(map(str, files)) and {r['label'] for r in res} <= {'blue', 'red'}
    x = torch.stack([r['image'] for r in res]).float() / 255
    mean, std = torch.tensor(cfg['mean']).view(1, 3, 1, 1), torch.tensor(cfg['std']).view(1, 3, 1, 1)
    with torch.no_grad(): p = net((x - mean) / std).softmax(1)   # the saved weights give predict's numbers
    torch.testing.assert_close(p[:, 0], torch.tensor([r['top_k'][0]['probability'] if r['label'] == 'blue'
                                                       else 1 - r['top_k'][0]['probability'] for r in res]),
                               atol=1e-4, rtol=0)

def _run(data, tmp_path, name='run'):
    torch.manual_seed(0)
    cfg = model_config('resnet18', data)
    net = build_model(cfg); save_model(net, cfg, tmp_path/name)
    return net

def test_from_run_takes_all_but_a_new_head(rgb, tmp_path, cache):
    old = _run(rgb, tmp_path)
    new = get_data(colour_folder(tmp_path/'rgb3', {'a': (250, 250, 0), 'b': (0, 250, 250), 'c': (250, 0, 250)}),
                   size=64, progress=False, valid_pct=0.25)
    kw = transfer_setup('resnet18', None, tmp_path/'run', new)
    assert isinstance(kw['cbs'][0], FreezeCB)
    net = build_model(model_config('resnet18', new)); kw['init'](net)
    assert torch.equal(net.layer3[0].conv1.weight, old.layer3[0].conv1.weight) and net.fc.out_features == 3
    assert not net.fc.weight.any() and not net.fc.bias.any()   # a new head starts at zero: equal odds
    groups = kw['param_groups'](net, 1e-3)
    assert [g['lr'] for g in groups] == [1e-4, 1e-3] and list(groups[1]['params']) == list(net.fc.parameters())
    same = transfer_setup('resnet18', None, tmp_path/'run', rgb)   # the same classes: the head is kept
    net2 = build_model(model_config('resnet18', rgb)); same['init'](net2)
    assert torch.equal(net2.fc.weight, old.fc.weight)

def test_from_run_fine_tunes(rgb, tmp_path, cache):
    _, m0 = train_classifier(rgb, 'resnet18', epochs=1, bs=6, out=tmp_path/'run', progress=False)
    old, _ = load_model(tmp_path/'run', 'cpu')
    new = get_data(colour_folder(tmp_path/'rgb3', {'a': (250, 250, 0), 'b': (0, 250, 250), 'c': (250, 0, 250)}),
                   size=64, progress=False, valid_pct=0.25)
    learn, m = train_classifier(new, 'resnet18', epochs=2, bs=6, out=tmp_path/'ft', progress=False,
                                **transfer_setup('resnet18', None, tmp_path/'run', new, freeze_epochs=1))
    net, cfg = load_model(tmp_path/'ft', 'cpu')
    assert cfg['classes'] == ['a', 'b', 'c'] and len(learn.opt.param_groups) == 2
    assert not torch.equal(net.layer1[0].conv1.weight, old.layer1[0].conv1.weight)   # the body was fine-tuned
    assert all(p.requires_grad for p in learn.model.parameters())

@pytest.mark.filterwarnings('ignore:Detected pickle protocol')   # torch's note on the plain pickle it refuses
def test_bad_weights_are_one_line(rgb, tmp_path):
    net = _run(rgb, tmp_path)
    sd = net.state_dict()
    torch.save({**sd, 'layer2.0.bn1.weight': torch.ones(3)}, tmp_path/'wrong.pth')
    refused(lambda: transfer_setup('resnet18', str(tmp_path/'wrong.pth'), None, rgb),
            'tensor layer2.0.bn1.weight has shape (3,)')
    refused(lambda: transfer_setup('resnet18', str(tmp_path/'missing.pth'), None, rgb), 'no such weights file')
    torch.save(net, tmp_path/'module.pth')                    # a pickled module: only loads by running its pickle
    refused(lambda: transfer_setup('resnet18', str(tmp_path/'module.pth'), None, rgb), 'never a pickled model')
    (tmp_path/'plain.pkl').write_bytes(pickle.dumps({'x': 1}))
    refused(lambda: transfer_setup('resnet18', str(tmp_path/'plain.pkl'), None, rgb), 'never a pickled model')
    (tmp_path/'bad.safetensors').write_bytes(b'not safetensors')
    refused(lambda: transfer_setup('resnet18', str(tmp_path/'bad.safetensors'), None, rgb), 'bad.safetensors')
    refused(lambda: transfer_setup('mobilenet_v3_small', str(tmp_path/'run'/'model.safetensors'), None, rgb),
            'no tensor features.0.0.weight')

def test_imagenet_from_cache_or_one_line(rgb, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path/'hub'))
    def offline(*a, **k): raise OSError("no network")
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    msg = refused(lambda: transfer_setup('resnet18', 'imagenet', None, rgb), 'resnet18-f37072fd.pth')
    assert str(tmp_path/'hub'/'checkpoints') in msg and 'https://download.pytorch.org/models/' in msg
    refused(lambda: imagenet_state('seed'), "no ImageNet weights for 'seed'")
    net = _run(rgb, tmp_path)
    torch.save(net.state_dict(), tmp_path/'hub'/'checkpoints'/'resnet18-f37072fd.pth')   # as torchvision caches it
    kw = transfer_setup('resnet18', 'imagenet', None, rgb)
    fresh = build_model(model_config('resnet18', rgb)); kw['init'](fresh)
    assert torch.equal(fresh.layer4[0].conv2.weight, net.layer4[0].conv2.weight)

def test_grey_data_takes_rgb_weights(rgb, tmp_path, cache):
    net = _run(rgb, tmp_path)
    grey = get_data(colour_folder(tmp_path/'grey', {'dark': (50, 50, 50), 'light': (200, 200, 200)}, mode='L'),
                    size=64, progress=False, valid_pct=0.25)
    assert grey.channels == 1
    kw = transfer_setup('resnet18', str(tmp_path/'run'/'model.safetensors'), None, grey)
    g = build_model(model_config('resnet18', grey)); kw['init'](g)
    torch.testing.assert_close(g.conv1.weight, net.conv1.weight.sum(1, keepdim=True))

def test_wrong_runs_and_models_are_one_line(rgb, tmp_path, cache):
    _run(rgb, tmp_path)
    refused(lambda: transfer_setup('fast', None, tmp_path/'run', rgb), 'a resnet18 run on 3-channel images')
    grey = get_data(colour_folder(tmp_path/'grey', {'dark': (50, 50, 50), 'light': (200, 200, 200)}, mode='L'),
                    size=64, progress=False, valid_pct=0.25)
    refused(lambda: transfer_setup('resnet18', None, tmp_path/'run', grey), 'needs a resnet18 run on 1-channel images')
    (tmp_path/'empty').mkdir()
    refused(lambda: transfer_setup('resnet18', None, tmp_path/'empty', rgb), 'empty')
    refused(lambda: transfer_setup('resnet99', 'none', None, rgb), "unknown model 'resnet99'")
    refused(lambda: transfer_setup('resnet18', 'imagenet', tmp_path/'run', rgb), 'not both')


def test_resnet18_run_from_the_command_line_predicts_and_exports(tmp_path, cache):
    """Issue 23's first check, end to end: `lepton train --model resnet18 --weights none --size 64` on a folder of RGB
    images, then `predict` on the folder and `export`, whose graph (run by onnxruntime) agrees on every image;
    `--from` the run fine-tunes it."""
    import json
    ort = pytest.importorskip('onnxruntime'); pytest.importorskip('onnx')
    from helpers import lepton_here
    from lepton_nb.data import load_image
    root = colour_folder(tmp_path/'rgb', {'red': (200, 40, 40), 'blue': (40, 40, 200), 'green': (40, 200, 40)})
    run = tmp_path/'run'
    r = lepton_here('train', '--data', root, '--model', 'resnet18', '--weights', 'none', '--size', '64',
                    '--epochs', '1', '--batch-size', '8', '--out', run)
    assert r.returncode == 0, r.stderr
    assert json.loads((run/'config.json').read_text())['arch'] == 'resnet18'
    r = lepton_here('predict', run, root, '--json')
    assert r.returncode == 0, r.stderr
    labels = {d['file']: d['label'] for d in json.loads(r.stdout)['predictions']}
    assert len(labels) == 24
    r = lepton_here('export', run, '--json')
    assert r.returncode == 0, r.stderr
    s = ort.InferenceSession(json.loads(r.stdout)['path'])
    classes = json.loads(s.get_modelmeta().custom_metadata_map['classes'])
    for f, label in labels.items():
        x = load_image(f, (64, 64), 3).numpy()[None]
        assert classes[int(s.run(None, {'pixels': x})[0].argmax())] == label, f
    r = lepton_here('train', '--data', root, '--from', run, '--epochs', '1', '--batch-size', '8',
                    '--out', tmp_path/'ft')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path/'ft'/'config.json').read_text())['arch'] == 'resnet18'
