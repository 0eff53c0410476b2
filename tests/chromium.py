"""Headless Chromium for the browser tests, driven over the DevTools protocol (no browser download, no driver).

`Browser()` starts the system's Chromium (`chromium`, or `$CHROMIUM`) with a fresh profile, with every host name but
127.0.0.1 and localhost unresolvable, so a page that reaches for the network fails here as it would offline.
`browser.new_page()` opens a tab that records console errors, uncaught exceptions and failed loads (`page.errors`)
and every request to another host (`page.external`)."""
import base64, itertools, json, os, shutil, signal, subprocess, tempfile, threading, time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import websocket  # websocket-client

FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-quic', '--disable-extensions', '--disable-default-apps',
         '--no-default-browser-check', '--mute-audio', '--hide-scrollbars', '--window-size=1280,900',
         '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost']
LOCAL = {'127.0.0.1', 'localhost', '[::1]', '::1'}


def find_chromium() -> str | None:
    "The Chromium to use: `$CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` on the PATH."
    for c in (os.environ.get('CHROMIUM'), 'chromium', 'chromium-browser', 'google-chrome'):
        if c and shutil.which(c): return shutil.which(c)
    return None


class CDPError(RuntimeError): pass


class Browser:
    "A headless Chromium and one DevTools connection to it; use as a context manager."

    def __init__(self, exe:str|None=None, timeout:float=30):
        self.exe = exe or find_chromium()
        if self.exe is None: raise FileNotFoundError('no chromium on the PATH (Debian: apt-get install chromium)')
        self.profile = tempfile.mkdtemp(prefix='lepton-chromium-')
        self.proc = subprocess.Popen([self.exe, *FLAGS, '--remote-debugging-port=0', f'--user-data-dir={self.profile}',
                                      'about:blank'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        port_file, t0 = Path(self.profile)/'DevToolsActivePort', time.monotonic()
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None:
                raise RuntimeError(f'chromium exited at start: {self.proc.stderr.read().decode()[-2000:]}')
            if time.monotonic() - t0 > timeout: self.close(); raise TimeoutError('chromium did not open its DevTools port')
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f'ws://127.0.0.1:{port}{path}', timeout=timeout, suppress_origin=True,
                                              enable_multithread=True)
        self.ids = itertools.count(1)
        self.events = []   # (sessionId, method, params)
        self.replies = {}

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()

    def close(self):
        try: self.ws.close()
        except Exception: pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        try: os.killpg(self.proc.pid, signal.SIGKILL)  # its helper processes, in the group started for it
        except (ProcessLookupError, PermissionError): pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def _pump(self, timeout:float):
        "Read one message (or none within `timeout`), keep it as a reply or an event."
        self.ws.settimeout(max(timeout, 0.01))
        try: msg = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException: return
        if 'id' in msg: self.replies[msg['id']] = msg
        else: self.events.append((msg.get('sessionId'), msg['method'], msg.get('params', {})))

    def send(self, method:str, params:dict|None=None, session:str|None=None, timeout:float=30) -> dict:
        "Call a DevTools method and return its result."
        i = next(self.ids)
        msg = {'id': i, 'method': method, 'params': params or {}}
        if session: msg['sessionId'] = session
        self.ws.send(json.dumps(msg))
        end = time.monotonic() + timeout
        while i not in self.replies:
            if time.monotonic() > end: raise TimeoutError(f'{method}: no reply in {timeout} s')
            self._pump(end - time.monotonic())
        r = self.replies.pop(i)
        if 'error' in r: raise CDPError(f"{method}: {r['error'].get('message')} {r['error'].get('data', '')}")
        return r.get('result', {})

    def new_page(self, width:int=1280, height:int=900) -> 'Page':
        target = self.send('Target.createTarget', {'url': 'about:blank'})['targetId']
        session = self.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
        return Page(self, target, session, width, height)


class Page:
    "One tab: navigate, evaluate, wait, click, type, screenshot; with what went wrong on it."

    def __init__(self, browser:Browser, target:str, session:str, width:int, height:int):
        self.b, self.target, self.session = browser, target, session
        self.seen = 0
        self.errors, self.external = [], []
        for m in ('Page.enable', 'Runtime.enable', 'Log.enable', 'Network.enable'): self.send(m)
        self.send('Emulation.setDeviceMetricsOverride', {'width': width, 'height': height, 'deviceScaleFactor': 1,
                                                         'mobile': False})

    def send(self, method, params=None, timeout=30): return self.b.send(method, params, self.session, timeout)

    def _events(self):
        "The events of this tab that arrived since the last call, errors and external requests noted."
        new = [e for e in self.b.events[self.seen:]]
        self.seen = len(self.b.events)
        out = []
        for sid, method, p in new:
            if sid != self.session: continue
            out.append((method, p))
            if method == 'Runtime.exceptionThrown':
                d = p['exceptionDetails']
                self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif method == 'Runtime.consoleAPICalled' and p['type'] in ('error', 'assert'):
                self.errors.append('console.error: ' + ' '.join(str(a.get('value', a.get('description', '')))
                                                              for a in p.get('args', [])))
            elif method == 'Log.entryAdded' and p['entry']['level'] == 'error':
                e = p['entry']
                self.errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
            elif method == 'Network.requestWillBeSent':
                u = urlsplit(p['request']['url'])
                if u.scheme in ('http', 'https', 'ws', 'wss') and u.hostname not in LOCAL:
                    self.external.append(p['request']['url'])
        return out

    def wait_event(self, name:str, timeout:float=30) -> dict:
        end = time.monotonic() + timeout
        while True:
            for method, p in self._events():
                if method == name: return p
            if time.monotonic() > end: raise TimeoutError(f'no {name} in {timeout} s')
            self.b._pump(min(0.2, end - time.monotonic()))

    def goto(self, url:str, timeout:float=60):
        "Open `url` and wait for its load event."
        self._events()
        r = self.send('Page.navigate', {'url': url})
        if r.get('errorText'): raise RuntimeError(f"{url}: {r['errorText']}")
        self.wait_event('Page.loadEventFired', timeout)

    def eval(self, expr:str, timeout:float=30):
        "Evaluate JavaScript in the page (promises awaited) and return its value."
        r = self.send('Runtime.evaluate', {'expression': expr, 'returnByValue': True, 'awaitPromise': True}, timeout)
        self._events()
        if 'exceptionDetails' in r:
            raise RuntimeError(f"{expr[:80]}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r['result'].get('value')

    def wait_for(self, expr:str, timeout:float=30, what:str=''):
        "Poll a JavaScript expression until it is truthy; return its value."
        end = time.monotonic() + timeout
        while True:
            v = self.eval(expr)
            if v: return v
            if time.monotonic() > end: raise TimeoutError(f'{what or expr}: not true within {timeout} s')
            self.b._pump(0.2)

    def settle(self, seconds:float=0.3):
        "Let late events (errors of scripts that run after load) arrive."
        end = time.monotonic() + seconds
        while time.monotonic() < end: self.b._pump(end - time.monotonic())
        self._events()

    def click(self, selector:str):
        "Click the middle of the first element matching `selector`, as a mouse does."
        box = self.wait_for(f"""(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return r.width && r.height ? [r.x + r.width/2, r.y + r.height/2] : null; }})()""", what=f'{selector} visible')
        self.send('Input.dispatchMouseEvent', {'type': 'mouseMoved', 'x': box[0], 'y': box[1]})
        for kind in ('mousePressed', 'mouseReleased'):
            self.send('Input.dispatchMouseEvent', {'type': kind, 'x': box[0], 'y': box[1], 'button': 'left', 'clickCount': 1})

    def type(self, text:str): self.send('Input.insertText', {'text': text})

    def press(self, key:str='Enter', shift:bool=False):
        "Press and release a key (Enter, Escape, ...), with Shift if asked."
        codes = {'Enter': 13, 'Escape': 27, 'Tab': 9, 'ArrowLeft': 37, 'ArrowUp': 38, 'ArrowRight': 39, 'ArrowDown': 40}
        p = {'key': key, 'code': key, 'windowsVirtualKeyCode': codes.get(key, 0), 'modifiers': 8 if shift else 0}
        self.send('Input.dispatchKeyEvent', {'type': 'rawKeyDown', **p, **({'text': '\r'} if key == 'Enter' else {})})
        if key == 'Enter': self.send('Input.dispatchKeyEvent', {'type': 'char', **p, 'text': '\r'})
        self.send('Input.dispatchKeyEvent', {'type': 'keyUp', **p})

    def screenshot(self, path:Path, full:bool=False):
        "Save a PNG of the page (the whole page if `full`)."
        p = {'format': 'png', 'captureBeyondViewport': full}
        if full:
            w, h = self.eval('[document.documentElement.scrollWidth, document.documentElement.scrollHeight]')
            p['clip'] = {'x': 0, 'y': 0, 'width': w, 'height': min(h, 12000), 'scale': 1}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(self.send('Page.captureScreenshot', p, timeout=60)['data']))


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
