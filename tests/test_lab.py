"""JupyterLab, as `make lab` starts it: a notebook renders, and ipywidgets work with a live kernel.

JupyterLab runs headless on a free port of 127.0.0.1 with a token, on a copy of the notebooks (so nothing it saves
touches `nbs/`), with its own settings, workspaces and runtime folders, and is stopped with its kernels at the end.
Running every notebook top to bottom through a Jupyter kernel is `nbdev_test`'s job in `make test` (the notebooks'
own tests, with the quick defaults); this file does not run them again. Screenshots go to `test_artifacts/`."""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

from chromium import Browser, find_chromium
from helpers import ROOT

BIN = Path(sys.executable).parent
NBS = ROOT/'nbs'
ARTIFACTS = ROOT/'test_artifacts'

WIDGETS = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'widgets', 'metadata': {}, 'outputs': [],
                      'source': "import ipywidgets as w, lepton_nb\nprint(lepton_nb.__file__)\n"
                                "w.interactive(lambda n: print(f'{n} squared is {n * n}'), "
                                "n=w.IntSlider(value=5, min=1, max=10, description='n'))"}],
           'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
           'nbformat': 4, 'nbformat_minor': 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def opened_notebook() -> Path:
    "The notebook the test opens: the activations notebook once it exists, else the first with display maths."
    nbs = sorted(p for p in NBS.glob('[0-9]*.ipynb'))
    act = [p for p in nbs if 'activations' in p.stem]
    return act[0] if act else next(p for p in nbs if '$$' in p.read_text(encoding='utf-8'))


@pytest.fixture(scope='module')
def browser():
    if find_chromium() is None:
        if os.environ.get('LEPTON_NO_BROWSER'): pytest.skip('LEPTON_NO_BROWSER is set and there is no chromium')
        pytest.fail('no chromium: `make system-deps` as root, or `apt-get install chromium`, or set $CHROMIUM '
                    '(LEPTON_NO_BROWSER=1 skips the browser tests)')
    with Browser() as b: yield b


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "JupyterLab on a copy of the notebooks plus a scratch notebook; yields (url, token, folder)."
    root = tmp_path_factory.mktemp('lab')
    shutil.copytree(NBS, root/'nbs',
                    ignore=lambda d, names: [n for n in names if n.startswith(('_', '.')) or n == 'runs'])
    (root/'scratch').mkdir()
    (root/'scratch'/'widgets.ipynb').write_text(json.dumps(WIDGETS))
    # no news toast over the page (and no question about it) in these tests
    news = root/'.settings'/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True); news.write_text(json.dumps({'fetchNews': 'false'}))
    env = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", 'JUPYTER_PLATFORM_DIRS': '1',
           'JUPYTER_CONFIG_DIR': str(root/'.config'), 'JUPYTER_RUNTIME_DIR': str(root/'.runtime'),
           'JUPYTERLAB_WORKSPACES_DIR': str(root/'.workspaces'), 'JUPYTERLAB_SETTINGS_DIR': str(root/'.settings'),
           'IPYTHONDIR': str(root/'.ipython')}
    port, token = free_port(), secrets.token_hex(16)
    cmd = [str(BIN/'jupyter'), 'lab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
           '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    if os.geteuid() == 0: cmd.append('--allow-root')
    log = open(root/'lab.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}/'
    try:
        end = time.monotonic() + 120
        while True:
            if proc.poll() is not None: pytest.fail(f'jupyter lab exited: {(root/"lab.log").read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(f'{url}api/status?token={token}', timeout=5) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.monotonic() > end:
                pytest.fail(f'jupyter lab did not answer: {(root/"lab.log").read_text()[-3000:]}')
            time.sleep(0.3)
        yield url, token, root
    finally:
        proc.terminate()  # the server shuts its kernels down
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        try: os.killpg(proc.pid, signal.SIGKILL)  # a kernel left behind, in the group this test started
        except ProcessLookupError: pass
        log.close()


def open_in_lab(browser, lab, path, workspace):
    "A new tab on JupyterLab with one notebook open, in a fresh workspace; waits for its first cell."
    url, token, _ = lab
    page = browser.new_page()
    page.goto(f'{url}lab/workspaces/{workspace}/tree/{path}?reset&token={token}', timeout=120)
    page.wait_for("!!document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')", 120,
                  what=f'{path} shows cells')
    return page


def kernel_idle(page, timeout=120):
    page.wait_for("(document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator')"
                  " || {dataset: {}}).dataset.status === 'idle'", timeout, what='the kernel is idle')


def test_a_notebook_renders(browser, lab):
    nb = opened_notebook()
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    page = open_in_lab(browser, lab, f'nbs/{nb.name}', 'render')
    panel = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)')"
    # every cell is there (JupyterLab may add them in batches)
    page.wait_for(f"{panel}.querySelectorAll('.jp-Notebook .jp-Cell').length === {len(cells)}", 60,
                  what=f'{len(cells)} cells')
    title = re.match(r'#\s+(.+)', ''.join(cells[0]['source'])).group(1)
    page.wait_for(f"{panel}.querySelectorAll('mjx-container').length", 60, what='MathJax typeset the formulas')
    state = page.eval(f"""(() => {{ const p = {panel}; return {{
        title: (p.querySelector('.jp-RenderedMarkdown h1') || {{}}).textContent,
        markdown: p.querySelectorAll('.jp-RenderedMarkdown').length,
        code: p.querySelectorAll('.jp-CodeCell .cm-content').length,
        visible: p.querySelector('.jp-Cell').getBoundingClientRect().height,
        raw_tex: [...p.querySelectorAll('.jp-RenderedMarkdown')].some(e => e.textContent.includes('$$')),
        dialogs: document.querySelectorAll('.jp-Dialog').length,
        widget_errors: document.body.innerText.includes('Error displaying widget') }}; }})()""")
    assert state['title'].rstrip('¶').strip() == re.sub(r'[`*]', '', title).strip(), state
    assert state['markdown'] > 0 and state['code'] > 0 and state['visible'] > 0, state
    assert not state['raw_tex'] and state['dialogs'] == 0 and not state['widget_errors'], state
    page.screenshot(ARTIFACTS/'lab-notebook.png')
    page.settle(0.5)
    assert page.errors == [], page.errors
    assert page.external == [], f'JupyterLab reached for another host: {page.external}'


PANEL = '.jp-NotebookPanel:not(.lm-mod-hidden)'


def lab_state(page, root) -> str:
    "What a person would look at when a cell does not run: the kernel's name and status, dialogs, the server's log."
    state = page.eval(f"""(() => {{ const p = document.querySelector('{PANEL}'); const q = s => p && p.querySelector(s);
        return {{kernel: (q('.jp-Toolbar-kernelName') || {{}}).innerText,
                 status: ((q('.jp-Notebook-ExecutionIndicator') || {{}}).dataset || {{}}).status,
                 prompt: (q('.jp-Cell .jp-InputPrompt') || {{}}).innerText,
                 dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText),
                 toasts: [...document.querySelectorAll('.Toastify__toast')].map(d => d.innerText)}}; }})()""")
    page.screenshot(ARTIFACTS/'lab-widgets-failed.png')
    log = (root/'lab.log').read_text(errors='replace')[-2000:] if (root/'lab.log').exists() else ''
    return f'{state}\njupyter lab log (end):\n{log}'


def open_and_run(browser, lab, path, workspace):
    """Open a notebook and run its first cell as a learner does: the toolbar's run button, or Shift+Enter in the cell.
    JupyterLab may still be settling the kernel's session when the status first says idle, and then ignore the run
    or ask which kernel to use: answer a kernel dialog with its default, and try again until the cell has run.
    Halfway, open the notebook in a new tab and close the old one, as a person would, in case its connection to the
    kernel was lost (a new tab, so what the old one reports as it is torn down is not counted). Returns the tab."""
    root = lab[2]
    page = open_in_lab(browser, lab, path, workspace)
    kernel_idle(page)
    prompt = f"document.querySelector('{PANEL} .jp-Cell .jp-InputPrompt').innerText"
    for attempt in range(8):   # a first kernel start on a fresh install can take most of a minute on 2 cores
        if attempt == 4:
            page.close()
            time.sleep(3)    # let the server see the old tab's connections close before the new tab opens its own
            page = open_in_lab(browser, lab, path, workspace)
            kernel_idle(page)
        dialogs = page.eval("[...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText)")
        if dialogs:
            assert all('kernel' in d.lower() for d in dialogs), f'unexpected dialog: {dialogs}\n{lab_state(page, root)}'
            page.click('.jp-Dialog .jp-mod-accept')
            page.wait_for("!document.querySelector('.jp-Dialog')", 30, what='the kernel dialog closes')
        if attempt % 2 == 0:   # select the cell (which makes its notebook the active one), then the run button
            page.click(f'{PANEL} .jp-Cell .jp-InputPrompt')
            page.click(f'{PANEL} .jp-Toolbar [data-command="notebook:run-cell-and-select-next"]')
        else:
            page.click(f'{PANEL} .jp-Cell .cm-content')
            page.press('Enter', shift=True)
        try:
            page.wait_for(f"/\\[[*0-9]+\\]/.test({prompt})", 5 + 5 * attempt, what='the cell runs')
            return page
        except TimeoutError:
            try: kernel_idle(page)
            except TimeoutError: raise AssertionError(f'the kernel is not idle: {lab_state(page, root)}') from None
    raise AssertionError(f'the cell did not run after 8 tries: {lab_state(page, root)}')


def test_widgets_render_and_respond(browser, lab):
    page = open_and_run(browser, lab, 'scratch/widgets.ipynb', 'widgets')
    out = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .jp-OutputArea')"
    page.wait_for(f"!!({out} && {out}.querySelector('.widget-slider .noUi-handle'))", 60, what='the slider is drawn')
    page.wait_for(f"{out}.innerText.includes('5 squared is 25')", 30, what='the interactive output')
    text = page.eval(f'{out}.innerText')
    # the kernel runs this checkout's package (make lab installs it in editable mode)
    assert str(ROOT/'lepton_nb'/'__init__.py') in text, text
    # moving the slider reaches the kernel and comes back. Click the handle first, as a person would: Shift+Enter on the
    # last cell opens a new cell in edit mode, which may take the keyboard focus after the output is drawn
    handle = f"{PANEL} .jp-Cell .jp-OutputArea .widget-slider .noUi-handle"
    readout = f"document.querySelector('{PANEL} .jp-Cell .jp-OutputArea .widget-readout').innerText"
    for attempt in range(4):
        page.click(handle)
        page.press('ArrowRight')
        try: page.wait_for(f"{readout} !== '5'", 5 + 5 * attempt, what='the slider moves'); break
        except TimeoutError:
            if attempt == 3: raise AssertionError(f'the slider did not move: {lab_state(page, lab[2])}') from None
    n = int(page.eval(readout))
    assert 6 <= n <= 10, n
    try: page.wait_for(f"{out}.innerText.includes('{n} squared is {n * n}')", 30, what='the output follows the slider')
    except TimeoutError:
        raise AssertionError(f'the output did not follow the slider to {n}: {lab_state(page, lab[2])}') from None
    assert page.eval("document.querySelectorAll('.jp-Dialog').length") == 0
    assert 'Error displaying widget' not in page.eval(f'{out}.innerText')
    page.screenshot(ARTIFACTS/'lab-widgets.png')
    page.settle(0.3)
    assert page.errors == [], page.errors
    assert page.external == [], f'JupyterLab reached for another host: {page.external}'
