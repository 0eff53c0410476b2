"""Headless Chromium for the browser tests, driven by Playwright (the system's Chromium: no browser download).

`Browser()` starts the system's Chromium (`$CHROMIUM`, else `chromium` on the PATH) through Playwright's
`executable_path`, with a fresh profile and every host name but 127.0.0.1 and localhost unresolvable, so a page that
reaches for the network fails here as it would offline. `playwright install` is never needed (nor run).
`browser.new_page()` opens a tab that records console errors, uncaught exceptions and failed loads (`page.errors`) and
every request or web socket to another host (`page.external`)."""
import os, shutil, tempfile, threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Error as PlaywrightError, TimeoutError as PlaywrightTimeout, sync_playwright

# what a closed network needs: nothing started in the background, no updates, no sync, no first-run page, no QUIC
FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-quic', '--disable-extensions', '--disable-default-apps',
         '--no-default-browser-check', '--mute-audio', '--hide-scrollbars',
         '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost']
LOCAL = {'127.0.0.1', 'localhost', '[::1]', '::1'}


def find_chromium() -> str | None:
    "The Chromium to use: `$CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` on the PATH."
    for c in (os.environ.get('CHROMIUM'), 'chromium', 'chromium-browser', 'google-chrome'):
        if c and shutil.which(c): return shutil.which(c)
    return None


class Browser:
    "A headless system Chromium under Playwright, in a fresh profile; use as a context manager."

    def __init__(self, exe:str|None=None, timeout:float=60):
        self.exe = exe or find_chromium()
        if self.exe is None: raise FileNotFoundError('no chromium on the PATH (Debian: apt-get install chromium)')
        self.profile = tempfile.mkdtemp(prefix='lepton-chromium-')
        self.pw = sync_playwright().start()
        try:
            self.context = self.pw.chromium.launch_persistent_context(
                self.profile, executable_path=self.exe, headless=True, args=FLAGS, chromium_sandbox=False,
                viewport={'width': 1280, 'height': 900}, timeout=timeout * 1000)
        except BaseException:
            self.pw.stop(); shutil.rmtree(self.profile, ignore_errors=True); raise

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()

    def close(self):
        try: self.context.close()
        except PlaywrightError: pass
        self.pw.stop()
        shutil.rmtree(self.profile, ignore_errors=True)

    def new_page(self, width:int=1280, height:int=900) -> 'Page':
        return Page(self.context.new_page(), width, height)


class Page:
    "One tab: navigate, evaluate, wait, click, type, screenshot; with what went wrong on it."

    def __init__(self, page, width:int, height:int):
        self.pw_page, self.errors, self.external = page, [], []
        page.set_viewport_size({'width': width, 'height': height})
        page.on('pageerror', lambda e: self.errors.append(f'exception: {e.stack or e}'))
        page.on('console', self._console)
        page.on('request', lambda r: self._external(r.url))
        page.on('websocket', lambda w: self._external(w.url))

    def _console(self, msg):
        # console.error/assert from scripts, and the browser's own error log (a resource that failed to load...)
        if msg.type in ('error', 'assert'):
            loc = msg.location.get('url', '') if msg.location else ''
            self.errors.append(f'console.{msg.type}: {msg.text} {loc}'.strip())

    def _external(self, url:str):
        u = urlsplit(url)
        if u.scheme in ('http', 'https', 'ws', 'wss') and u.hostname not in LOCAL: self.external.append(url)

    def goto(self, url:str, timeout:float=60):
        "Open `url` and wait for its load event."
        try: self.pw_page.goto(url, wait_until='load', timeout=timeout * 1000)
        except PlaywrightTimeout: raise TimeoutError(f'{url}: no load event in {timeout} s') from None
        except PlaywrightError as e: raise RuntimeError(f'{url}: {e.message}') from None

    def eval(self, expr:str, timeout:float=30):
        "Evaluate a JavaScript expression in the page (promises awaited) and return its value."
        try: return self.pw_page.evaluate(expr)
        except PlaywrightError as e: raise RuntimeError(f'{expr[:80]}: {e.message}') from None

    def wait_for(self, expr:str, timeout:float=30, what:str=''):
        "Poll a JavaScript expression (every 100 ms, across navigations) until it is truthy; return its value."
        try: return self.pw_page.wait_for_function(expr, timeout=timeout * 1000, polling=100).json_value()
        except PlaywrightTimeout: raise TimeoutError(f'{what or expr}: not true within {timeout} s') from None

    def settle(self, seconds:float=0.3):
        "Let late events (errors of scripts that run after load) arrive."
        self.pw_page.wait_for_timeout(seconds * 1000)

    def click(self, selector:str, timeout:float=30):
        "Click the middle of the first element matching `selector` once it is visible, stable and not covered."
        try: self.pw_page.click(selector, timeout=timeout * 1000)
        except PlaywrightTimeout: raise TimeoutError(f'{selector}: not clickable within {timeout} s') from None

    def type(self, text:str): self.pw_page.keyboard.insert_text(text)

    def press(self, key:str='Enter', shift:bool=False):
        "Press and release a key (Enter, Escape, ArrowRight...), with Shift if asked."
        self.pw_page.keyboard.press(f'Shift+{key}' if shift else key)

    def screenshot(self, path:Path, full:bool=False):
        "Save a PNG of the page (the whole page if `full`)."
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.pw_page.screenshot(path=str(path), full_page=full, timeout=60_000)

    def close(self): self.pw_page.close()


class _Quiet(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, '.mjs': 'text/javascript', '.js': 'text/javascript',
                      '.json': 'application/json', '.woff2': 'font/woff2', '.svg': 'image/svg+xml'}
    def log_message(self, *a): pass


class serve:
    "Serve a folder on a free port of 127.0.0.1 while in the `with` block; `.url` is its address."
    def __init__(self, folder:Path): self.folder = Path(folder)
    def __enter__(self):
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(_Quiet, directory=str(self.folder)))
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self
    def __exit__(self, *exc):
        self.httpd.shutdown(); self.httpd.server_close(); self.thread.join(5)
