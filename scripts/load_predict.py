"""Load: `lepton predict RUN FOLDER` over a folder of many images, measured from outside.

Makes a classifier folder (an untrained 'seed' network saved with `save_model`: the weights do not change the work)
and a folder of N small PNG files (copies of 64 distinct random images, 1,000 to a sub-folder), then runs
`lepton predict RUN FOLDER` as a child process and reports its peak resident memory (the child's `ru_maxrss`, from
`os.wait4`), its wall time and images per second, and the CPU kind PyTorch uses.

    python scripts/load_predict.py --images 50000               # the benchmark (benchmarks/load.md)
    python scripts/load_predict.py --images 2000 --size 64 --channels 3 --json
"""
import argparse, io, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_model(out:Path, size:int, channels:int) -> Path:
    "An untrained classifier folder of the given input size and channels, as `lepton train` writes it."
    import torch
    from lepton_nb.artifacts import save_model
    from lepton_nb.cnn import build_model, model_config
    torch.manual_seed(0)
    cfg = model_config('seed', n_classes=10, classes=[f'c{i}' for i in range(10)], channels=channels, size=size,
                       mean=[0.5] * channels, std=[0.25] * channels)
    save_model(build_model(cfg), cfg, out)
    return out


def make_folder(root:Path, n:int, size:int, channels:int) -> Path:
    "`n` PNG files under `root`, 1,000 to a sub-folder: copies of 64 distinct random images."
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(64):
        a = rng.integers(0, 256, (size, size, channels) if channels == 3 else (size, size), dtype=np.uint8)
        b = io.BytesIO(); Image.fromarray(a).save(b, format='PNG'); blobs.append(b.getvalue())
    for i in range(n):
        d = root/f'part{i // 1000:03d}'
        if i % 1000 == 0: d.mkdir(parents=True, exist_ok=True)
        (d/f'img{i:06d}.png').write_bytes(blobs[i % 64])
    return root


def run_predict(run:Path, folder:Path, extra=()) -> dict:
    "Run `lepton predict RUN FOLDER` as a child; its figures (lines it printed, seconds, peak RSS in MiB, status)."
    exe = shutil.which('lepton', path=str(BIN)) or 'lepton'
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen([exe, 'predict', str(run), str(folder), *extra], stdout=subprocess.PIPE, stderr=err,
                             env=env, cwd=run.parent)
        lines = sum(1 for _ in p.stdout)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t0
        err.seek(0); tail = err.read().decode(errors='replace')[-500:]
    return {'lines': lines, 'seconds': round(secs, 2), 'peak_rss_mib': round(usage.ru_maxrss / 1024, 1),
            'status': p.returncode, 'stderr_tail': tail}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', type=int, default=50_000)
    ap.add_argument('--size', type=int, default=28)
    ap.add_argument('--channels', type=int, default=1, choices=[1, 3])
    ap.add_argument('--work', type=Path, help='where to make the run and the folder (default: a temporary folder)')
    ap.add_argument('--json', action='store_true')
    a = ap.parse_args(argv)
    import torch
    work = a.work or Path(tempfile.mkdtemp(prefix='lepton-load-'))
    try:
        t0 = time.perf_counter()
        run = make_model(work/'run', a.size, a.channels)
        folder = make_folder(work/'images', a.images, a.size, a.channels)
        made = time.perf_counter() - t0
        r = run_predict(run, folder)
        r.update(images=a.images, size=a.size, channels=a.channels, images_per_second=round(a.images / r['seconds'], 1),
                 cpu=torch.backends.cpu.get_cpu_capability(), cores=os.cpu_count(), setup_seconds=round(made, 1))
        if a.json: print(json.dumps(r))
        else:
            print(f"{a.images:,} images of {a.size}x{a.size}x{a.channels}: {r['seconds']} s, "
                  f"{r['images_per_second']:,} images/s, peak RSS {r['peak_rss_mib']} MiB, status {r['status']}, "
                  f"{r['lines']:,} lines, CPU {r['cpu']} ({r['cores']} cores)")
        return 0 if r['status'] == 0 and r['lines'] == a.images else 1
    finally:
        if not a.work: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
