import pytest

@pytest.fixture
def cache(tmp_path, monkeypatch):
    "A private user cache, so tests never touch (or depend on) the real one."
    d = tmp_path/'cache'
    monkeypatch.setenv('LEPTON_CACHE', str(d))
    monkeypatch.delenv('LEPTON_DATA', raising=False)
    return d
