"""WordNet 3.0 synonyms, offline, read through nltk from a system install (Debian's ``wordnet-base``).

Debian puts the WordNet database in ``/usr/share/wordnet/`` but leaves out ``lexnames``, which nltk needs, and
nltk expects the files under ``<root>/corpora/wordnet/``. So we build that layout once in the cache directory:
copies of the system files plus a generated ``lexnames``. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

from tuneguard.cache import cache_dir, key_hash
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_bytes, atomic_write_text

WORDNET_ENV = "TUNEGUARD_WORDNET_DIR"
SYSTEM_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/opt/homebrew/share/wordnet")
INSTALL_HINT = (
    "WordNet is not installed: run `apt-get install -y wordnet-base wordnet-sense-index` "
    f"(or point ${WORDNET_ENV} at a WordNet 3.0 dict directory)"
)

# The files nltk's reader opens (index.sense and cntlist.rev give sense keys and frequency counts).
_FILES = (
    *(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")),
    *(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")),
    "index.sense",
    "cntlist.rev",
)
_REQUIRED = ("index.noun", "data.noun", "index.sense")

# WordNet 3.0's fixed list of lexicographer files: number, name, part-of-speech number (1 n, 2 v, 3 a, 4 r).
_LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1", "noun.artifact 1",
    "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1", "noun.event 1",
    "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1", "noun.object 1",
    "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
    "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1",
    "verb.body 2", "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2", "adj.ppl 3",
)

# Function words WordNet still lists under odd senses ("a" angstrom, "in" inch, "is" be): never replaced by the
# synonym rewriters (the ``wordnet`` neighbour generator and paraphraser).
STOPWORDS = frozenset("""
a an and are as at be been being but by can could did do does for from had has have he her hers him his how i if in
into is it its may me might more most must my no nor not of on or our ours she should so such than that the their them
then there these they this those to too up us was we were what when where which while who whom why will with would you
your also only very each other some any all both few many much own same just over under again further once here out off
""".split())

# Accepted part-of-speech spellings -> WordNet's letters ("a" also covers adjective satellites "s").
_POS = {
    "n": "n", "noun": "n", "v": "v", "verb": "v", "a": "a", "adj": "a", "adjective": "a", "s": "a",
    "r": "r", "adv": "r", "adverb": "r",
}


def _source_dir() -> Path | None:
    """The first directory holding a WordNet 3.0 database: $TUNEGUARD_WORDNET_DIR, then the system locations."""
    env = os.environ.get(WORDNET_ENV)
    for candidate in ([env] if env else []) + list(SYSTEM_DIRS):
        path = Path(candidate)
        if all((path / name).is_file() for name in _REQUIRED):
            return path
    return None


def wordnet_available() -> bool:
    """True when a WordNet database is installed where tuneguard looks for it."""
    return _source_dir() is not None


def _nltk_root(source: Path) -> Path:
    """Build (once) ``<cache>/wordnet/<tag>/corpora/wordnet/`` from ``source`` and return the reader's root."""
    # One layout per source directory, so a changed $TUNEGUARD_WORDNET_DIR never reuses stale files.
    root = cache_dir("wordnet", key_hash(str(source.resolve())), "corpora", "wordnet")
    for name in _FILES:
        target, dest = source / name, root / name
        # A copy, not a link: nltk (3.10+) refuses symlinks that leave the corpus root and multiply-linked files
        # (so a link left by an older tuneguard is replaced too).
        if target.is_file() and (dest.is_symlink() or not dest.is_file()):
            atomic_write_bytes(dest, target.read_bytes())
    lexnames = "".join(f"{i:02d}\t{entry.replace(' ', chr(9))}\n" for i, entry in enumerate(_LEXNAMES))
    if not (root / "lexnames").is_file() or (root / "lexnames").read_text() != lexnames:
        atomic_write_text(root / "lexnames", lexnames)
    return root


@functools.lru_cache(maxsize=4)
def _reader(source: str):
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = _nltk_root(Path(source))
    # nltk only opens files under a directory on nltk.data.path.
    allowed = str(root.parent.parent)
    if allowed not in nltk.data.path:
        nltk.data.path.append(allowed)
    with warnings.catch_warnings():
        # No Open Multilingual Wordnet here; English synonyms do not need it.
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(str(root), None)


def wordnet_reader():
    """The nltk ``WordNetCorpusReader`` over the installed database (built once, then cached)."""
    source = _source_dir()
    if source is None:
        raise TuneguardError(INSTALL_HINT)
    return _reader(str(source))


def synonyms(word: str, pos: str | None = None, *, senses: int | None = None) -> list[str]:
    """Single-word synonyms of ``word`` (nltk's morphy finds the base form), most frequent first.

    Lemmas come from every synset of ``word`` (optionally of one part of speech: n/v/a/r or noun/verb/adj/adv; with
    ``senses``, only its first that many synsets per part of speech, WordNet's most frequent senses), excluding
    multi-word lemmas and ``word`` itself (case-insensitive). Order: WordNet's tagged-corpus frequency counts,
    summed over the senses the lemma shares with ``word``, then sense order; deterministic.
    """
    wn_pos = None
    if pos is not None:
        wn_pos = _POS.get(pos.lower())
        if wn_pos is None:
            raise TuneguardError(f"unknown part of speech {pos!r}: use one of n, v, a, r (or noun, verb, adj, adv)")
    reader = wordnet_reader()
    key = word.strip().lower()
    if not key:
        return []
    # The word's own base forms ("running" -> "run") are not synonyms of it.
    own = {key} | {base for p in "nvar" if (base := reader.morphy(key, p))}
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    # nltk's "a" already includes adjective satellites.
    synsets = reader.synsets(key, pos=wn_pos)
    if senses is not None:
        rank: dict[str, int] = {}  # senses seen so far per part of speech (satellites count as adjectives)
        kept = []
        for synset in synsets:
            p = "a" if synset.pos() == "s" else synset.pos()
            rank[p] = rank.get(p, 0) + 1
            if rank[p] <= senses:
                kept.append(synset)
        synsets = kept
    for synset in synsets:
        for lemma in synset.lemmas():
            name = lemma.name()
            if "_" in name or name.lower() in own:
                continue
            first_seen.setdefault(name, len(first_seen))
            counts[name] = counts.get(name, 0) + lemma.count()
    return sorted(first_seen, key=lambda name: (-counts[name], first_seen[name]))


def pos_counts(word: str) -> dict[str, int]:
    """How often ``word`` occurs as each part of speech (n/v/a/r) in WordNet's sense-tagged corpus (0 when never)."""
    reader = wordnet_reader()
    key = word.strip().lower()
    counts = {}
    for pos in "nvar":
        base = reader.morphy(key, pos)
        counts[pos] = sum(lemma.count() for synset in reader.synsets(key, pos=pos) for lemma in synset.lemmas()
                          if base and lemma.name().lower() == base)
    return counts


def same_case(replacement: str, original: str) -> str:
    """``replacement`` with the capitalisation of ``original`` (UPPER, Title or lower)."""
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement.lower() if original.islower() else replacement
