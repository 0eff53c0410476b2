"""The CUDA lane: the same code paths as the CPU tests, on a GPU. Skipped cleanly where no CUDA device exists;
`scripts/gpu_check.sh` runs them on a GPU machine. CPU twins: test_train_cli.py, the inline tests of 05/07/08."""
import pytest
import torch

import lepton_nb.data as D
from lepton_nb.core import get_device, to_device, Timer
from lepton_nb.learner import bf16_supported

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (the CPU twins cover this path on a CPU)')

@cuda
def test_device_choice_and_batches():
    assert get_device('auto').type == 'cuda'
    b = to_device({'x': torch.ones(3), 'y': [torch.zeros(2)]}, 'cuda')
    assert b['x'].is_cuda and b['y'][0].is_cuda

@cuda
def test_tensor_loader_keeps_data_on_the_gpu():
    fm = D.load_fashion_mnist()
    dl = D.TensorLoader(fm.x_train, fm.y_train, 512, shuffle=True, device='cuda', mean=fm.mean, std=fm.std, channels_last=True)
    assert dl.x.is_cuda and dl.x.dtype == torch.uint8           # one uint8 copy, resident on the device
    xb, yb = next(iter(dl))
    assert xb.is_cuda and xb.is_contiguous(memory_format=torch.channels_last) and yb.is_cuda

@cuda
def test_fast_recipe_trains_on_gpu_with_bf16():
    from lepton_nb.cnn import train_classifier
    assert bf16_supported('cuda')
    fm = D.load_fashion_mnist()
    small = D.ImageData(fm.x_train[:12000], fm.y_train[:12000], fm.x_valid, fm.y_valid, fm.classes, mean=fm.mean, std=fm.std)
    learn, m = train_classifier(small, 'fast', epochs=2, device='cuda', progress=False)
    assert next(learn.model.parameters()).is_cuda and m['device'].startswith('cuda')
    assert m['test_accuracy'] > 0.8

@cuda
def test_scratch_layers_match_torch_on_gpu():
    from lepton_nb import conv, activations
    import torch.nn.functional as F
    x = torch.randn(8, 3, 17, 19, device='cuda', dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, device='cuda', dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(conv.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))
    torch.testing.assert_close(conv.max_pool2d(x, 2), F.max_pool2d(x, 2))
    torch.testing.assert_close(activations.sigmoid(x), torch.sigmoid(x))

@cuda
def test_timer_waits_for_the_gpu():
    a = torch.randn(4096, 4096, device='cuda')
    with Timer('cuda') as t: (a @ a).sum()
    assert t.elapsed > 0
