"`lepton bench --only optimize`: the compression figures of notebook 13, end to end (in this process, on a subset)."
import lepton_nb.data as D
import lepton_nb.bench as B
import lepton_nb.optimize as O
from helpers import last_json, lepton_here

def test_bench_optimize_reports_compression(cache, monkeypatch):
    # 10,000 training and 2,000 test images, a seed CNN trained on 3,000 of them: the figures' kinds and the int8
    # model's size and accuracy are what is checked here; notebook 13 measures them on the whole data set
    fm = D.load_fashion_mnist(cache=False)
    monkeypatch.setattr(D, 'load_fashion_mnist', lambda *a, **k: O.subset(fm, 10_000, n_valid=2_000))
    bench = B.bench_optimize
    monkeypatch.setattr(B, 'bench_optimize', lambda data, device=None: bench(data, device, n_train=3_000, repeats=3))
    r = lepton_here('bench', '--only', 'optimize', '--json')
    assert r.returncode == 0, r.stderr
    b = last_json(r.stdout)
    for k in ('int8_size_ratio', 'int8_latency_ratio', 'int8_accuracy_delta', 'prune90_global_accuracy_delta',
              'channels50_latency_ratio', 'channels_last_latency_ratio'):
        assert isinstance(b[k], float), k
    assert 3.5 < b['int8_size_ratio'] < 4.1                 # 1 byte per weight instead of 4, plus scales
    assert b['optimize_fp32_accuracy'] > 0.8 and abs(b['int8_accuracy_delta']) < 0.02
    assert b['int8_latency_ratio'] > 0 and b['channels50_latency_ratio'] > 0
    assert 'int8_size_ratio' in r.stderr      # the figures are also printed, one per line (--json: on standard error)
