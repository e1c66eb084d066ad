"""WordNet synonyms read offline from the system install."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneguard import wordnet
from tuneguard.errors import TuneguardError

needs_wordnet = pytest.mark.skipif(
    not wordnet.wordnet_available(),
    reason="WordNet is not installed (apt-get install -y wordnet-base wordnet-sense-index)",
)


def test_missing_wordnet_raises_one_line_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(wordnet, "SYSTEM_DIRS", ())
    monkeypatch.setenv(wordnet.WORDNET_ENV, str(tmp_path))  # a directory without a database is ignored
    assert not wordnet.wordnet_available()
    with pytest.raises(TuneguardError) as err:
        wordnet.synonyms("car")
    assert "apt-get install -y wordnet-base wordnet-sense-index" in str(err.value)
    assert "\n" not in str(err.value)


@needs_wordnet
def test_synonyms_are_single_words_other_than_the_word():
    syns = wordnet.synonyms("car")
    assert "automobile" in syns
    assert "car" not in syns
    assert all("_" not in s and " " not in s for s in syns)
    assert len(syns) == len(set(syns))


@needs_wordnet
def test_inflected_word_excludes_its_own_base_form():
    syns = wordnet.synonyms("running", pos="v")
    assert "run" not in syns
    assert "operate" in syns


@needs_wordnet
def test_order_is_deterministic_and_frequency_first():
    first = wordnet.synonyms("quick", pos="adj")
    assert first == wordnet.synonyms("quick", pos="a")
    # "speedy" and "fast" are frequent in the tagged corpus counts; "straightaway" is rare.
    assert first.index("speedy") < first.index("straightaway")


@needs_wordnet
def test_part_of_speech_filters_and_validates():
    assert "learn" in wordnet.synonyms("study", pos="verb")
    assert "learn" not in wordnet.synonyms("study", pos="n")
    with pytest.raises(TuneguardError, match="part of speech"):
        wordnet.synonyms("study", pos="preposition")
    assert wordnet.synonyms("xyzzyq") == []


@needs_wordnet
def test_layout_has_the_generated_lexnames():
    reader = wordnet.wordnet_reader()
    lexnames = (Path(reader.root.path) / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45
    assert lexnames[3] == "03\tnoun.Tops\t1"
    assert reader.synset("dog.n.01").lexname() == "noun.animal"


@needs_wordnet
def test_links_left_by_an_older_layout_are_replaced_by_copies():
    # nltk refuses a corpus file that links outside its root ("Security Violation"), so a stale link must go.
    source = wordnet._source_dir()
    root = wordnet._nltk_root(source)
    (root / "data.adj").unlink()
    (root / "data.adj").symlink_to(source / "data.adj")
    wordnet._reader.cache_clear()
    assert not wordnet._nltk_root(source).joinpath("data.adj").is_symlink()
    assert "automobile" in wordnet.synonyms("car")


def test_one_stopword_list_and_case_copy_for_both_rewriters():
    from tuneguard.neighbours import wordnet as neighbour_wordnet
    from tuneguard.paraphrase import wordnet as paraphrase_wordnet

    assert wordnet.same_case("automobile", "CAR") == "AUTOMOBILE"
    assert wordnet.same_case("automobile", "Car") == "Automobile"
    assert wordnet.same_case("Automobile", "car") == "automobile"
    assert wordnet.same_case("iPod", "eBook") == "iPod"  # mixed case: left as WordNet spells it
    assert {"the", "is", "in", "a"} <= wordnet.STOPWORDS
    for module in (neighbour_wordnet, paraphrase_wordnet):  # neither keeps a copy of its own
        assert not {"STOPWORDS", "same_case", "_same_case"} & set(vars(module))
