"""User-given names never lead a write or a deletion outside the output directory (issue 24, item 1)."""

import json
import random

import pytest

from helpers import write_jsonl
from tuneguard.errors import TuneguardError
from tuneguard.experiment import load_experiment, run_experiment
from tuneguard.paths import MAX_COMPONENT_BYTES, inside, remove_tree, safe_component

NASTY = ["..", ".", "../..", "../../etc", "a/b", "a\\b", "nul\x00byte", "new\nline", "tab\tname", "/abs", "~",
         ".hidden", "x" * 400, "é" * 200, "données ρ=0.5", "a b", "a_b", "", " ", "CON", "..\\..", "\u202egnp.exe"]


def random_names(n: int, seed: int = 0) -> list[str]:
    """Names drawn from separators, dots, control characters, ASCII and multi-byte letters, of any length."""
    rng = random.Random(seed)
    alphabet = ["/", "\\", ".", "..", "\x00", "\n", "\r", "\x1b", " ", "a", "Z", "0", "_", "-", "é", "ρ", "漢", "🙂"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 3, 8, 60, 300]))) for _ in range(n)]


@pytest.mark.parametrize("name", NASTY + random_names(300))
def test_a_name_becomes_one_safe_component(name, tmp_path):
    part = safe_component(name)
    assert part not in ("", ".", "..") and not part.startswith(".")
    assert not any(c in part for c in "/\\") and all(c.isprintable() for c in part)
    assert len(part.encode("utf-8")) <= MAX_COMPONENT_BYTES + 11
    assert (tmp_path / part).resolve().parent == tmp_path.resolve()
    (tmp_path / part).mkdir()  # the file system takes it as one folder


def test_distinct_names_stay_distinct_and_safe_names_are_kept():
    names = set(NASTY + random_names(2000, seed=1) + ["a_b-" + safe_component("a b")[4:]])
    assert len({safe_component(n) for n in names}) == len(names)
    for kept in ("pubmed", "lora", "full-ft", "soft_0.5", "données", "eps-8"):
        assert safe_component(kept) == kept


def test_inside_refuses_a_path_or_link_that_leaves_the_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, root / "a" / "b") == root / "a" / "b"
    with pytest.raises(TuneguardError, match="outside the output directory"):
        inside(root, root / ".." / "x")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(TuneguardError, match="outside the output directory"):
        inside(root, root / "link" / "victim")
    with pytest.raises(TuneguardError, match="symbolic link"):
        remove_tree(root, root / "link")
    with pytest.raises(TuneguardError, match="output directory itself"):
        remove_tree(root, root / "a" / "..")
    assert tmp_path.is_dir() and root.is_dir()


def snapshot(root, skip):
    """Every file under ``root`` outside ``skip``, with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and skip not in p.parents}


def toml_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # JSON's escapes (\n, \u0000, \\) are TOML basic-string escapes


def write_experiment(folder, datasets, regimes, members):
    corpus = folder / "a.jsonl"
    write_jsonl(corpus, [f"record {i}: value {i * 13 % 97} seen on day {i}." for i in range(24)])
    blocks = "".join(f"[[datasets]]\nname = {toml_string(d)}\npath = \"a.jsonl\"\nmembers = {members}\n"
                     f"nonmembers = 4\n" for d in datasets)
    table = "".join(f"{toml_string(r)} = {{ kind = \"{kind}\" }}\n" for r, kind in regimes)
    (folder / "exp.toml").write_text(
        f'model = "tiny-gpt2"\nout = "out"\nattacks = ["loss", "ratio"]\ngeneral_texts = 2\n'
        f"[attack_options]\nn_boot = 0\n[train]\nepochs = 1\nbatch_size = 4\nmax_length = 16\n{blocks}"
        f"[regimes]\n{table}")
    return folder / "exp.toml"


def run_twice_and_check(tmp_path, datasets, regimes):
    """Run, then change the members count (every cell turns stale and is deleted); nothing outside out changes."""
    work = tmp_path / "a" / "b" / "exp"
    work.mkdir(parents=True)
    (tmp_path / "a" / "keep.txt").write_text("the user's file")
    path = write_experiment(work, datasets, regimes, members=4)
    out = work / "out"
    before = snapshot(tmp_path, out)
    run_experiment(load_experiment(path), progress=False)
    assert snapshot(tmp_path, out) == before
    path = write_experiment(work, datasets, regimes, members=5)
    before = snapshot(tmp_path, out)
    summary = run_experiment(load_experiment(path), progress=False)
    assert snapshot(tmp_path, out) == before
    assert set(summary["cells"]) == set(datasets)
    return summary


def test_dot_dot_names_write_and_delete_only_inside_out(tmp_path):
    # The issue's input: on the old slug a '..' dataset and a '..' regime put the cell two levels above out, and the
    # stale-cell clean-up deleted the experiment file, its data and everything beside them.
    run_twice_and_check(tmp_path, [".."], [("..", "pretrained")])


def test_random_names_write_and_delete_only_inside_out(tmp_path):
    names = [n for n in NASTY + random_names(6, seed=2) if n]
    folders, unique = set(), []
    for n in names:  # names that share a folder are refused at load (tested below)
        if safe_component(n).casefold() not in folders:
            folders.add(safe_component(n).casefold())
            unique.append(n)
    datasets, regime_names = unique[:4], unique[4:]
    regimes = [(n, "lora" if i == 0 else "pretrained") for i, n in enumerate(regime_names)]
    summary = run_twice_and_check(tmp_path, datasets, regimes)
    assert set(summary["cells"][datasets[0]]) == set(regime_names)


@pytest.mark.parametrize("datasets, regimes", [(["A"], ["lora", "LoRA"]), (["A", "A"], ["lora"]),
                                               (["x", "X"], ["lora"])])
def test_two_names_sharing_a_folder_are_refused(tmp_path, datasets, regimes):
    path = write_experiment(tmp_path, datasets, [(r, "pretrained") for r in regimes], members=4)
    with pytest.raises(TuneguardError, match="rename one"):
        load_experiment(path)
