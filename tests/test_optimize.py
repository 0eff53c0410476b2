"`lepton bench --only optimize`: the compression figures of notebook 10, end to end."
from helpers import last_json, lepton

def test_bench_optimize_reports_compression(cache):
    r = lepton('bench', '--only', 'optimize', '--json', env={'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    b = last_json(r.stdout)
    for k in ('int8_size_ratio', 'int8_latency_ratio', 'int8_accuracy_delta', 'prune90_global_accuracy_delta',
              'channels50_latency_ratio', 'channels_last_latency_ratio'):
        assert isinstance(b[k], float), k
    assert 3.5 < b['int8_size_ratio'] < 4.1                 # 1 byte per weight instead of 4, plus scales
    assert b['optimize_fp32_accuracy'] > 0.8 and abs(b['int8_accuracy_delta']) < 0.02
    assert b['int8_latency_ratio'] > 0 and b['channels50_latency_ratio'] > 0
    assert 'int8_size_ratio' in r.stdout.split('{')[0]      # the figures are also printed, one per line
