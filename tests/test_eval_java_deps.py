"""SPICE's Java dependencies: where they are found, how bad ones are refused, and fetching through Maven
from a repository served on 127.0.0.1 (the same request Maven Central answers for `make install`)."""
import functools
import http.server
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from eval import java_deps
from eval.java_deps import CORENLP_CODE, CORENLP_MODELS, JavaDepsError


@pytest.fixture
def real_cache():
    """The cache `python -m eval.java_deps fetch` filled (make install); a missing one fails loudly here."""
    cache = java_deps.cache_dir()
    assert CORENLP_CODE.path_in(cache / "maven").is_file(), \
        f"CoreNLP not fetched into {cache}: run `python -m eval.java_deps fetch`"
    return cache


def test_status_finds_everything_spice_needs(real_cache):
    st = java_deps.status()
    assert st["spice_ready"], st
    assert st["corenlp"][0].endswith("stanford-corenlp-3.6.0.jar")
    assert st["corenlp"][1].endswith("stanford-corenlp-3.6.0-models.jar")
    assert st["rhino"], "Java 17 needs Rhino for SPICE's script engine"


def test_user_supplied_jars_are_used_and_checked(real_cache, tmp_path, monkeypatch):
    d = tmp_path / "mine"
    d.mkdir()
    for a in (CORENLP_CODE, CORENLP_MODELS):
        os.symlink(a.path_in(real_cache / "maven"), d / a.filename)
    monkeypatch.setenv("VLFUSION_CORENLP_JARS", str(d))
    assert java_deps.find_corenlp_jars() == (d / CORENLP_CODE.filename, d / CORENLP_MODELS.filename)
    # the two paths given in either order
    monkeypatch.setenv("VLFUSION_CORENLP_JARS",
                       os.pathsep.join([str(d / CORENLP_MODELS.filename), str(d / CORENLP_CODE.filename)]))
    assert java_deps.find_corenlp_jars()[0].name == CORENLP_CODE.filename


def test_wrong_jars_fail_with_a_clear_message(tmp_path, monkeypatch):
    d = tmp_path / "bad"
    d.mkdir()
    (d / CORENLP_CODE.filename).write_bytes(b"not a zip")
    with zipfile.ZipFile(d / CORENLP_MODELS.filename, "w") as zf:
        zf.writestr("hello.txt", "hi")
    monkeypatch.setenv("VLFUSION_CORENLP_JARS", str(d))
    with pytest.raises(JavaDepsError, match="is not a jar"):
        java_deps.find_corenlp_jars()
    shutil.copy(d / CORENLP_MODELS.filename, d / CORENLP_CODE.filename)
    with pytest.raises(JavaDepsError, match="does not contain edu/stanford/nlp/pipeline/StanfordCoreNLP.class"):
        java_deps.find_corenlp_jars()


def test_missing_jars_say_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.delenv("VLFUSION_CORENLP_JARS", raising=False)
    monkeypatch.setattr(java_deps, "pycocoevalcap_spice_dir", lambda: tmp_path / "no-pycocoevalcap-lib")
    with pytest.raises(JavaDepsError, match="python -m eval.java_deps fetch"):
        java_deps.find_corenlp_jars(tmp_path / "empty-cache")


def test_rhino_from_env_must_provide_a_script_engine(tmp_path, monkeypatch):
    jar = tmp_path / "x.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    monkeypatch.setenv("VLFUSION_RHINO_JARS", str(jar))
    with pytest.raises(JavaDepsError, match="registers a javax.script engine"):
        java_deps.find_rhino_jars()


class _Repo:
    """A Maven repository directory served over HTTP on 127.0.0.1, counting requests."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        repo = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                repo.requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def settings(self, path: Path) -> Path:
        host, port = self.server.server_address
        path.write_text(f"""<settings><mirrors><mirror><id>local</id><mirrorOf>*</mirrorOf>
<url>http://{host}:{port}/</url></mirror></mirrors></settings>""")
        return path


def _served_copy(real_cache: Path, root: Path) -> Path:
    """A repository holding the Maven plugin (linked from the real cache) and the CoreNLP code jar."""
    src = real_cache / "maven"
    root.mkdir()
    for entry in src.iterdir():
        if entry.name != "edu":
            os.symlink(entry, root / entry.name)
    dst = CORENLP_CODE.path_in(root)
    dst.parent.mkdir(parents=True)
    return dst


def test_fetch_through_maven_from_a_local_mirror(real_cache, tmp_path):
    jar = _served_copy(real_cache, tmp_path / "served")
    src = CORENLP_CODE.path_in(real_cache / "maven")
    os.symlink(src, jar)
    os.symlink(src.with_name(src.name + ".sha1"), jar.with_name(jar.name + ".sha1"))
    cache = tmp_path / "cache"
    with _Repo(tmp_path / "served") as repo:
        settings = repo.settings(tmp_path / "settings.xml")
        report = java_deps.fetch(cache, settings=settings, artifacts=(CORENLP_CODE,), log=lambda m: None)
        assert report == {"fetched": [CORENLP_CODE.coordinate], "present": []}
        assert any(r.endswith(CORENLP_CODE.filename) for r in repo.requests)
        fetched = CORENLP_CODE.path_in(cache / "maven")
        assert java_deps._sha1(fetched) == CORENLP_CODE.sha1
        n = len(repo.requests)
        again = java_deps.fetch(cache, settings=settings, artifacts=(CORENLP_CODE,), log=lambda m: None)
        assert again == {"fetched": [], "present": [CORENLP_CODE.coordinate]}
        assert len(repo.requests) == n, "a second fetch must not touch the network"


def test_fetch_refuses_a_jar_that_is_not_the_pinned_one(real_cache, tmp_path):
    """A repository serving another jar with a matching .sha1 passes Maven's check but not ours."""
    jar = _served_copy(real_cache, tmp_path / "served")
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr(CORENLP_CODE.probe, b"\xca\xfe\xba\xbe")
    jar.with_name(jar.name + ".sha1").write_text(java_deps._sha1(jar))
    cache = tmp_path / "cache"
    with _Repo(tmp_path / "served") as repo:
        with pytest.raises(JavaDepsError, match="expected SHA-1"):
            java_deps.fetch(cache, settings=repo.settings(tmp_path / "settings.xml"), artifacts=(CORENLP_CODE,),
                            log=lambda m: None)
    assert not CORENLP_CODE.path_in(cache / "maven").exists()
