"Helpers shared by the tests: run the `lepton` command, build image folders."
import json, os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def lepton(*args, env=None, timeout=600, cwd=None):
    "Run the installed `lepton` command (in a fresh temporary folder unless `cwd` is given); return the result."
    import tempfile
    cwd = cwd or tempfile.mkdtemp(prefix='lepton-test-')
    exe = shutil.which('lepton', path=str(BIN)) or 'lepton'
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)

def last_json(stdout:str) -> dict:
    "The JSON object on the last line of a command's output."
    lines = [l for l in stdout.strip().splitlines() if l.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])

def assert_one_line_error(r, contains:str=''):
    "A failed command: non-zero exit, one line on stderr, no traceback."
    assert r.returncode != 0, r.stdout
    err = r.stderr.strip()
    assert 'Traceback' not in r.stderr, r.stderr
    assert len(err.splitlines()) == 1, r.stderr
    assert contains.lower() in err.lower(), err

def lepton_here(*args, cwd=None):
    """Call the command's `main` in this process (in a fresh temporary folder unless `cwd` is given), with its output
    captured: no interpreter and PyTorch start-up, for commands that end before any training (refusals). Returns an
    object with `returncode`, `stdout` and `stderr`, like `lepton`'s CompletedProcess."""
    import contextlib, io, tempfile
    from types import SimpleNamespace
    import torch
    from lepton_nb.cli import main
    from lepton_nb.core import get_rng_states, set_rng_states
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    rng, threads = get_rng_states(), torch.get_num_threads()   # a run seeds the generators: later tests keep theirs
    os.chdir(cwd or tempfile.mkdtemp(prefix='lepton-test-'))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: rc = main([str(a) for a in args])
            except SystemExit as e: rc = e.code if isinstance(e.code, int) else 1   # argparse's errors exit
    finally:
        os.chdir(here); set_rng_states(rng); torch.set_num_threads(threads)
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
