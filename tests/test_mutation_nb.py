"""The test cells of the formula notebooks (01-04, 06) as pytest tests, run against the *imported* module: what
`make mutation` needs, since a mutation tool changes the module's file, while `nbdev_test` runs the notebook's own
copy of the exported code.

One test per notebook: the notebook's namespace starts as the module's (its public and private names, as the exported
cells would define them), then every code cell that is not exported runs in order, as `nbdev_test` runs it, but for
the cells flagged `slow`, `gpu` or `notest`, IPython magics, and plots (matplotlib draws to a no-op backend).

A mutation run needs each test to take seconds, not minutes: `plan()` runs a notebook once, unmutated, stops every
cell that takes longer than `budget` seconds of CPU time (the experiments on Fashion-MNIST, trainings, big plots), and
drops it and every later cell that then fails (it needed the dropped cell's results). CPU time, not the clock: on a
busy machine a cell waits for a core, and the plan (so the tests a mutant meets) would change with the load.
`make mutation` writes the plan to a JSON file named by LEPTON_NB_PLAN; the test then runs only the cells the plan
keeps.

Skipped unless LEPTON_NB_CELLS=1 (`nbdev_test` already runs these notebooks in `make test`)."""
import contextlib, importlib, io, json, os, re, signal, time
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parents[1]/'nbs'
NOTEBOOKS = ['01_activations', '02_convolution', '03_svm', '04_gan_losses', '06_metrics']
SKIP_FLAGS = {'slow', 'gpu', 'notest', 'download'}

pytestmark = pytest.mark.skipif(os.environ.get('LEPTON_NB_CELLS') != '1', reason='LEPTON_NB_CELLS=1 runs these')


def directives(src:str) -> dict:
    "The `#| name args` lines of a cell: {'export': [], 'slow': [], 'eval:': ['false'] ...}."
    out = {}
    for line in src.splitlines():
        m = re.match(r'\s*#\|\s*([\w:-]+)\s*(.*)', line)
        if m: out[m.group(1)] = m.group(2).split()
    return out


def cells_of(nb:str) -> tuple:
    "(module name, the sources of the cells to run) of notebook `nb`."
    cells = json.loads((NBS/f'{nb}.ipynb').read_text())['cells']
    module, run = None, []
    for c in cells:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        d = directives(src)
        if 'default_exp' in d: module = d['default_exp'][0]; continue
        if {'export', 'exporti', 'exports'} & set(d) or SKIP_FLAGS & set(d) or d.get('eval:') == ['false']: continue
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(('%', '!'))]
        run.append('\n'.join(lines))
    return module, run


class TooSlow(BaseException): "A cell ran past the plan's budget."


def namespace(nb:str, module:str) -> dict:
    "The module's names, as the notebook's exported cells define them."
    mod = importlib.import_module(f'lepton_nb.{module}')
    ns = {k: v for k, v in vars(mod).items() if not k.startswith('__')}
    ns.update(__name__=f'nb_{nb}', display=lambda *a, **k: None)
    return ns


def plan(nb:str, budget:float=2.0) -> dict:
    """Run notebook `nb` once; {'keep': indices of the cells to run, 'dropped': {index: why}, 'seconds': kept CPU
    time}. The `#| hide` cells (the notebook's imports: slow only the first time) run without a time limit."""
    import matplotlib; matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    import sympy, sklearn.svm, sklearn.metrics, torch.testing   # noqa: F401  (imported here, not cut by the timer)
    module, cells = cells_of(nb)
    ns, keep, dropped, total = namespace(nb, module), [], {}, 0.0
    def alarm(*_): raise TooSlow()
    old = signal.signal(signal.SIGPROF, alarm)
    try:
        for i, src in enumerate(cells):
            t0 = time.process_time()
            if not src.lstrip().startswith('#| hide'): signal.setitimer(signal.ITIMER_PROF, budget)
            try:
                with contextlib.redirect_stdout(io.StringIO()): exec(compile(src, f'{nb}.ipynb[cell {i}]', 'exec'), ns)
                keep.append(i); total += time.process_time() - t0
            except TooSlow: dropped[i] = f'over {budget} s'
            except Exception as e: dropped[i] = f'{type(e).__name__} without the dropped cells: {str(e)[:80]}'
            finally: signal.setitimer(signal.ITIMER_PROF, 0); plt.close('all')
    finally: signal.signal(signal.SIGPROF, old)
    for _ in range(3):             # a dropped cell may have defined a name before its time ran out: run the plan again
        ns, failed = namespace(nb, module), []
        for i in keep:
            try:
                with contextlib.redirect_stdout(io.StringIO()): exec(compile(cells[i], f'{nb}[{i}]', 'exec'), ns)
            except Exception as e: failed.append(i); dropped[i] = f'{type(e).__name__} without the dropped cells'
            finally: plt.close('all')
        if not failed: break
        keep = [i for i in keep if i not in failed]
    return {'keep': keep, 'dropped': dict(sorted(dropped.items())), 'seconds': round(total, 2), 'cells': len(cells)}


@pytest.fixture(autouse=True)
def quiet_plots(monkeypatch):
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    monkeypatch.setattr(plt, 'show', lambda *a, **k: None)
    yield
    plt.close('all')


@pytest.mark.parametrize('nb', NOTEBOOKS)
def test_notebook(nb):
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    module, cells = cells_of(nb)
    ns = namespace(nb, module)
    keep = range(len(cells))
    if os.environ.get('LEPTON_NB_PLAN'): keep = json.loads(Path(os.environ['LEPTON_NB_PLAN']).read_text())[nb]['keep']
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for i in keep: exec(compile(cells[i], f'{nb}.ipynb[cell {i}]', 'exec'), ns)
    finally: torch.set_num_threads(n)
