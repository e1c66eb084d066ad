import json

import pytest

from tuneguard.data import clean_texts, fit_to_length, load_labelled, load_texts, make_split, split_members
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model


@pytest.fixture
def records():
    return [{"id": i, "text": f"text number {i}", "label": i % 2} for i in range(6)]


def test_each_file_source(tmp_path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = [r["text"] for r in records]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.csv").write_text("id,text\n" + "".join(f"{r['id']},{r['text']}\n" for r in records))
    (tmp_path / "a.tsv").write_text("text\n" + "".join(f"{r['text']}\n" for r in records))
    (tmp_path / "a.txt").write_text("\n".join(want) + "\n\n")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.csv", "a.tsv", "a.txt", "a.parquet"):
        assert load_texts(tmp_path / name) == want, name
    assert load_texts(tmp_path / "a.jsonl", limit=2) == want[:2]
    assert load_labelled(tmp_path / "a.jsonl")[:2] == [("text number 0", 0), ("text number 1", 1)]


def test_directory_of_text_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "sub" / "a.py").write_text("print('first')")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    assert load_texts(tmp_path) == ["second", "print('first')"]


def test_a_directory_of_data_files_names_the_file_to_pass(tmp_path, records):
    (tmp_path / "pubmed").mkdir()
    (tmp_path / "pubmed" / "LICENSE").write_text("CC BY")
    (tmp_path / "pubmed" / "abstracts.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(TuneguardError, match=r"holds no text files but holds the data file .*abstracts.jsonl: pass "
                                             r"that file itself, not its directory$"):
        load_texts(tmp_path / "pubmed")


def test_hub_datasets_source_is_wired(monkeypatch):
    import datasets

    monkeypatch.setattr("tuneguard.models.loading.hub_unreachable", lambda: None)  # the hub answers
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, split: datasets.Dataset.from_list([{"text": f"{name}/{split}"}]))
    assert load_texts("hf:some/corpus", split="test") == ["some/corpus/test"]


def test_shared_corpus(shared_data):
    texts = load_texts(shared_data / "pubmed" / "pubmedqa_abstracts.jsonl")
    assert len(texts) == 1000 and all(len(t) > 100 for t in texts)


@pytest.mark.parametrize("content, name, message", [
    (None, "missing.jsonl", "does not exist"),
    (b"\xff\xfe\x00bad", "bad.txt", "not UTF-8"),
    (b'{"text": "a"}\n{oops\n', "bad.jsonl", "line 2 is not valid JSON"),
    (b'{"body": "a", "title": "b"}\n', "cols.jsonl", "pass --column"),
    (b"x", "data.xlsx", "unsupported file type"),
])
def test_bad_files(tmp_path, content, name, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(TuneguardError, match=message):
        load_texts(tmp_path / name)


def test_wrong_column(tmp_path, records):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(TuneguardError, match="no column 'body'.*columns: id, text, label"):
        load_texts(tmp_path / "a.jsonl", column="body")


def test_cleaning():
    report = clean_texts(["  a cat  ", "", "a cat", "A cat!", "dog", "   "])
    assert report.texts == ["a cat", "A cat!", "dog"]
    assert (report.n_empty, report.n_duplicates, report.near_duplicates) == (2, 1, [(0, 1)])
    with pytest.raises(TuneguardError, match="no texts left"):
        clean_texts(["", "  "])


def test_random_split_is_seeded_and_disjoint():
    texts = [f"t{i}" for i in range(20)]
    a, b = split_members(texts, seed=3), split_members(texts, seed=3)
    assert a == b and a != split_members(texts, seed=4)
    assert len(a.members) == 10 and set(a.members).isdisjoint(a.nonmembers)
    assert sorted(a.members + a.nonmembers) == sorted(texts)
    assert len(split_members(texts, member_fraction=0.25).members) == 5


def test_split_refuses_overlap_and_duplicates():
    with pytest.raises(TuneguardError, match="1 texts are both members and non-members"):
        make_split(["a", "b "], ["b", "c"])
    with pytest.raises(TuneguardError, match="duplicate"):
        split_members(["a", "a", "b", "c"])
    texts, labels = make_split(["a"], ["b", "c"]).labelled()
    assert (texts, labels) == (["a", "b", "c"], [1, 0, 0])


def test_truncate_and_pack():
    tok = tiny_model("gpt2").tokenizer
    texts = ["one two three four five six seven", "eight nine"]
    cut = fit_to_length(texts, tok, 3)
    assert [len(tok(t)["input_ids"]) for t in cut] == [3, 2]
    packed = fit_to_length(texts, tok, 4, mode="pack")
    assert all(len(tok(t)["input_ids"]) == 4 for t in packed) and len(packed) == 2
