"""Java dependencies of the official SPICE scorer, fetched once from Maven Central and cached.

SPICE (the `spice-1.0.jar` shipped inside pycocoevalcap) needs Stanford CoreNLP 3.6.0, code and models, which
pycocoevalcap would download from nlp.stanford.edu on first use. We fetch the very same artifacts from Maven
Central by coordinate instead (`edu.stanford.nlp:stanford-corenlp:3.6.0` and its `models` classifier), with
Maven verifying Central's checksums and us verifying pinned SHA-1s.

SPICE also pretty-prints its JSON output through a `javax.script` JavaScript engine; Nashorn left the JDK in
Java 15, so on newer Java we put Rhino with its script-engine factory on the class path: Debian's
`librhino-java` (/usr/share/java/rhino.jar) when present, else `org.mozilla:rhino` + `rhino-engine` 1.7.14 from
Maven Central.

    python -m eval.java_deps fetch     # idempotent; a few seconds when everything is there
    python -m eval.java_deps status    # what would be used, and what is missing

Locations (first match wins):
- CoreNLP jars: $VLFUSION_CORENLP_JARS (a directory holding stanford-corenlp-3.6.0.jar and
  stanford-corenlp-3.6.0-models.jar, or the two jar paths joined by os.pathsep), then the cache, then
  pycocoevalcap's own spice/lib/ (where its downloader would have put them).
- Rhino: $VLFUSION_RHINO_JARS (paths joined by os.pathsep), then /usr/share/java/rhino.jar, then the cache.
- Cache: $VLFUSION_JAVA_DEPS, else $XDG_CACHE_HOME/vlfusion/java, else ~/.cache/vlfusion/java. It is a Maven
  local repository (cache/maven/...), so the jars are stored once.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
SCRIPT_ENGINE_SERVICE = "META-INF/services/javax.script.ScriptEngineFactory"
DEBIAN_RHINO = Path("/usr/share/java/rhino.jar")


class JavaDepsError(RuntimeError):
    """A Java dependency is missing or unusable; the message says how to get it."""


@dataclass(frozen=True, kw_only=True)
class Artifact:
    group: str
    artifact: str
    version: str
    classifier: str | None
    sha1: str
    probe: str  # a member the jar must contain, to reject a wrong or truncated file early

    @property
    def coordinate(self) -> str:
        base = f"{self.group}:{self.artifact}:{self.version}"
        return f"{base}:jar:{self.classifier}" if self.classifier else base

    @property
    def filename(self) -> str:
        suffix = f"-{self.classifier}" if self.classifier else ""
        return f"{self.artifact}-{self.version}{suffix}.jar"

    def path_in(self, maven_repo: Path) -> Path:
        return maven_repo.joinpath(*self.group.split("."), self.artifact, self.version, self.filename)


CORENLP_CODE = Artifact(group="edu.stanford.nlp", artifact="stanford-corenlp", version="3.6.0", classifier=None,
                        sha1="078d130323856e71e4223ab4962a3f86bc98bd8a",
                        probe="edu/stanford/nlp/pipeline/StanfordCoreNLP.class")
CORENLP_MODELS = Artifact(group="edu.stanford.nlp", artifact="stanford-corenlp", version="3.6.0",
                          classifier="models", sha1="e23de94a12edac0dd04dc67db94d18d8982b516f",
                          probe="edu/stanford/nlp/models/lexparser/englishPCFG.ser.gz")
RHINO = Artifact(group="org.mozilla", artifact="rhino", version="1.7.14", classifier=None,
                 sha1="24d091b80d513846293c00350f46d85f71797aff", probe="org/mozilla/javascript/Context.class")
RHINO_ENGINE = Artifact(group="org.mozilla", artifact="rhino-engine", version="1.7.14", classifier=None,
                        sha1="7f5c9501e9756ecd33464b82607843040294cdda", probe=SCRIPT_ENGINE_SERVICE)
CORENLP = (CORENLP_CODE, CORENLP_MODELS)
RHINO_FROM_MAVEN = (RHINO, RHINO_ENGINE)


def cache_dir() -> Path:
    if os.environ.get("VLFUSION_JAVA_DEPS"):
        return Path(os.environ["VLFUSION_JAVA_DEPS"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlfusion" / "java"


def pycocoevalcap_spice_dir() -> Path:
    try:
        import pycocoevalcap.spice as spice_pkg
    except ImportError:
        raise JavaDepsError("pycocoevalcap is not installed (pip install pycocoevalcap); it ships spice-1.0.jar"
                            ) from None
    return Path(spice_pkg.__file__).parent


def spice_jar() -> Path:
    jar = pycocoevalcap_spice_dir() / "spice-1.0.jar"
    if not jar.is_file():
        raise JavaDepsError(f"{jar} is missing: reinstall pycocoevalcap")
    return jar


def find_java() -> str:
    java = os.environ.get("VLFUSION_JAVA") or shutil.which("java")
    if not java:
        raise JavaDepsError("no `java` on PATH (set VLFUSION_JAVA to a java binary); the COCO caption metrics "
                            "need a Java runtime (8 or newer), e.g. apt-get install default-jre-headless")
    return java


def java_major_version(java: str | None = None) -> int:
    out = subprocess.run([java or find_java(), "-version"], capture_output=True, text=True, check=True).stderr
    # 'openjdk version "17.0.15" ...' or 'java version "1.8.0_292"'
    version = out.split('"')[1] if '"' in out else out.split()[2]
    parts = version.split(".")
    return int(parts[1]) if parts[0] == "1" else int(parts[0].split("-")[0])


def _check_jar(path: Path, artifact: Artifact | None, probe: str) -> Path:
    """Cheap sanity check (reads only the zip directory) so a wrong file fails here, not deep inside Java."""
    if not path.is_file():
        raise JavaDepsError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except zipfile.BadZipFile:
        raise JavaDepsError(f"{path} is not a jar (zip) file; delete it and fetch again") from None
    if probe not in names:
        what = artifact.coordinate if artifact else "this jar"
        raise JavaDepsError(f"{path} does not contain {probe}: it is not {what}")
    return path


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, artifact: Artifact) -> bool:
    """True when `path` has the pinned SHA-1; remembered in a marker so later checks need no rehash."""
    marker = path.with_name(path.name + ".vlfusion-verified")
    st = path.stat()
    stamp = {"sha1": artifact.sha1, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        if json.loads(marker.read_text()) == stamp:
            return True
    except (OSError, ValueError):
        pass
    if _sha1(path) != artifact.sha1:
        return False
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(stamp))
    tmp.replace(marker)
    return True


def _cached(artifact: Artifact, cache: Path) -> Path | None:
    path = artifact.path_in(cache / "maven")
    return path if path.is_file() and _verified(path, artifact) else None


def _split_paths(value: str) -> list[Path]:
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def find_corenlp_jars(cache: Path | None = None) -> tuple[Path, Path]:
    """(code jar, models jar) of CoreNLP 3.6.0, or JavaDepsError saying how to get them."""
    env = os.environ.get("VLFUSION_CORENLP_JARS")
    if env:
        paths = _split_paths(env)
        if len(paths) == 1 and paths[0].is_dir():
            paths = [paths[0] / a.filename for a in CORENLP]
        if len(paths) != 2:
            raise JavaDepsError("VLFUSION_CORENLP_JARS must be a directory or the code and models jars joined by "
                                f"{os.pathsep!r}, got {env!r}")
        code, models = sorted(paths, key=lambda p: "models" in p.name)
        return (_check_jar(code, CORENLP_CODE, CORENLP_CODE.probe),
                _check_jar(models, CORENLP_MODELS, CORENLP_MODELS.probe))
    cache = cache or cache_dir()
    found = [_cached(a, cache) for a in CORENLP]
    if all(found):
        return found[0], found[1]
    lib = pycocoevalcap_spice_dir() / "lib"
    legacy = [lib / a.filename for a in CORENLP]
    if all(p.is_file() for p in legacy):
        return (_check_jar(legacy[0], CORENLP_CODE, CORENLP_CODE.probe),
                _check_jar(legacy[1], CORENLP_MODELS, CORENLP_MODELS.probe))
    raise JavaDepsError(
        "SPICE needs Stanford CoreNLP 3.6.0 (code and models jars), not found in "
        f"{cache / 'maven'} nor {lib}. Fetch them from Maven Central with `python -m eval.java_deps fetch` "
        "(about 390 MB), or point VLFUSION_CORENLP_JARS to a directory holding stanford-corenlp-3.6.0.jar and "
        "stanford-corenlp-3.6.0-models.jar")


def _has_script_engine(jars: list[Path]) -> bool:
    for jar in jars:
        try:
            with zipfile.ZipFile(jar) as zf:
                if SCRIPT_ENGINE_SERVICE in zf.namelist():
                    return True
        except (OSError, zipfile.BadZipFile):
            continue
    return False


def find_rhino_jars(cache: Path | None = None, *, java_version: int | None = None) -> list[Path]:
    """Jars giving SPICE a JavaScript script engine; [] on Java < 15, whose Nashorn does the job."""
    env = os.environ.get("VLFUSION_RHINO_JARS")
    if env:
        jars = _split_paths(env)
        for jar in jars:
            _check_jar(jar, None, "META-INF/MANIFEST.MF")
        if not _has_script_engine(jars):
            raise JavaDepsError(f"VLFUSION_RHINO_JARS={env!r}: none of these jars registers a javax.script engine "
                                f"({SCRIPT_ENGINE_SERVICE}); add rhino-engine")
        return jars
    if java_version is None:
        java_version = java_major_version()
    if java_version < 15:
        return []
    if DEBIAN_RHINO.is_file() and _has_script_engine([DEBIAN_RHINO]):
        return [DEBIAN_RHINO.resolve()]
    cache = cache or cache_dir()
    found = [_cached(a, cache) for a in RHINO_FROM_MAVEN]
    if all(found):
        return [p for p in found if p is not None]
    raise JavaDepsError(
        f"Java {java_version} has no JavaScript engine, which SPICE uses to write its output; install Debian's "
        "librhino-java, or run `python -m eval.java_deps fetch` (fetches org.mozilla:rhino-engine 1.7.14), or "
        "set VLFUSION_RHINO_JARS")


def spice_classpath(cache: Path | None = None) -> list[Path]:
    """Everything `java -cp` needs to run edu.anu.spice.SpiceScorer."""
    spice = spice_jar()
    lib = sorted((spice.parent / "lib").glob("*.jar"))
    # pycocoevalcap's downloader may have left CoreNLP in lib/ as well; list it once, from where we found it.
    lib = [p for p in lib if not p.name.startswith("stanford-corenlp-")]
    return [spice, *lib, *find_corenlp_jars(cache), *find_rhino_jars(cache)]


def _mvn_get(artifact: Artifact, cache: Path, mvn: str, settings: Path | None) -> None:
    cmd = [mvn, "-B", "-q", "--strict-checksums"]
    if settings is not None:
        cmd += ["-s", str(settings)]
    cmd += [f"{MAVEN_DEPENDENCY_PLUGIN}:get", f"-Dartifact={artifact.coordinate}", "-Dtransitive=false",
            f"-Dmaven.repo.local={cache / 'maven'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise JavaDepsError(f"Maven could not fetch {artifact.coordinate} (exit {proc.returncode}):\n"
                            + "\n".join(tail))


def fetch(cache: Path | None = None, *, mvn: str | None = None, rhino: bool | None = None,
          settings: Path | None = None, artifacts: tuple[Artifact, ...] | None = None,
          log=print) -> dict[str, list[str]]:
    """Fetch whatever is missing into the cache; returns {"fetched": [...], "present": [...]} coordinates.

    rhino=None fetches Rhino only when the running Java needs one and Debian's librhino-java is absent.
    settings: a Maven settings.xml (e.g. naming a mirror of Central); default: Maven's usual ~/.m2/settings.xml.
    artifacts: fetch exactly these instead (CORENLP, plus Rhino as decided by `rhino`).
    """
    cache = cache or cache_dir()
    wanted = list(CORENLP) if artifacts is None else list(artifacts)
    if artifacts is not None:
        rhino = False
    elif rhino is None:
        try:
            rhino = bool(find_java()) and java_major_version() >= 15 and not (
                DEBIAN_RHINO.is_file() and _has_script_engine([DEBIAN_RHINO]))
        except JavaDepsError:
            rhino = False
    if rhino:
        wanted += RHINO_FROM_MAVEN
    report: dict[str, list[str]] = {"fetched": [], "present": []}
    for artifact in wanted:
        if _cached(artifact, cache):
            report["present"].append(artifact.coordinate)
            continue
        mvn = mvn or os.environ.get("VLFUSION_MVN") or shutil.which("mvn")
        if not mvn:
            raise JavaDepsError(f"{artifact.coordinate} is not cached and Maven (`mvn`) is not on PATH; install "
                                "maven, set VLFUSION_MVN, or download the jar yourself and set "
                                "VLFUSION_CORENLP_JARS / VLFUSION_RHINO_JARS")
        log(f"fetching {artifact.coordinate} from Maven Central into {cache / 'maven'} ...")
        _mvn_get(artifact, cache, mvn, settings)
        path = artifact.path_in(cache / "maven")
        if not path.is_file() or not _verified(path, artifact):
            if path.is_file():
                path.unlink()
            raise JavaDepsError(f"{artifact.coordinate}: downloaded jar does not have the expected SHA-1 "
                                f"{artifact.sha1}; removed it")
        _check_jar(path, artifact, artifact.probe)
        report["fetched"].append(artifact.coordinate)
    return report


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def status(cache: Path | None = None) -> dict[str, object]:
    cache = cache or cache_dir()
    out: dict[str, object] = {"cache_dir": str(cache), "cache_bytes": _dir_size(cache)}
    for name, probe in (("java", find_java), ("spice_jar", spice_jar), ("corenlp", find_corenlp_jars),
                        ("rhino", find_rhino_jars)):
        try:
            value = probe() if name in ("java", "spice_jar") else probe(cache)
            out[name] = [str(p) for p in value] if isinstance(value, (list, tuple)) else str(value)
        except JavaDepsError as e:
            out[name] = None
            out[f"{name}_error"] = str(e)
    out["spice_ready"] = all(out.get(k) is not None for k in ("java", "spice_jar", "corenlp", "rhino"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.java_deps",
                                     description="Fetch and inspect the Java jars the official SPICE scorer needs.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, text in (("fetch", "download missing jars from Maven Central into the cache (idempotent)"),
                       ("status", "print, as JSON, which jars would be used and what is missing")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--cache-dir", type=Path, default=None,
                       help="cache directory (default: $VLFUSION_JAVA_DEPS or ~/.cache/vlfusion/java)")
        if name == "fetch":
            p.add_argument("--mvn", default=None, help="Maven executable (default: $VLFUSION_MVN or mvn on PATH)")
            p.add_argument("--rhino", choices=("auto", "yes", "no"), default="auto",
                           help="also fetch Rhino from Maven Central (auto: only when Java>=15 lacks Debian's)")
            p.add_argument("--settings", type=Path, default=None,
                           help="Maven settings.xml to use (e.g. one naming a mirror of Maven Central)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            rhino = {"auto": None, "yes": True, "no": False}[args.rhino]
            report = fetch(args.cache_dir, mvn=args.mvn, rhino=rhino, settings=args.settings,
                           log=lambda m: print(m, file=sys.stderr))
            report["cache_dir"] = str(args.cache_dir or cache_dir())
            report["cache_bytes"] = _dir_size(Path(report["cache_dir"]))
            print(json.dumps(report, indent=2))
        else:
            report = status(args.cache_dir)
            print(json.dumps(report, indent=2))
            return 0 if report["spice_ready"] else 1
    except JavaDepsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
