"""Tests for vader/data/prompts.py and the YAMLs in conf/prompt_fn/ that build it."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from tests.tiny_svd import write_first_frames
from vader.data import prompts
from vader.data.prompts import PromptSource, builtin, nouns_activities, table, text_file

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "prompt_fn"


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def numbered(n: int) -> list[str]:
    return [f"prompt number {i}" for i in range(n)]


def assert_disjoint_split(src: PromptSource, everything: list[str]) -> None:
    assert src.train and src.val
    assert not set(src.train) & set(src.val)
    assert sorted(src.train + src.val) == sorted(everything)


# builtin ---------------------------------------------------------------------------------------

def test_builtin_holds_out_the_last_prompts():
    src = builtin()
    assert len(prompts.BUILTIN_PROMPTS) == 24
    assert len(set(prompts.BUILTIN_PROMPTS)) == 24
    assert src.val == list(prompts.BUILTIN_PROMPTS[-4:])
    assert src.train == list(prompts.BUILTIN_PROMPTS[:-4])
    assert_disjoint_split(src, list(prompts.BUILTIN_PROMPTS))
    assert builtin(num_val=1).val == [prompts.BUILTIN_PROMPTS[-1]]


@pytest.mark.parametrize("num_val", [0, -1, 24, 30])
def test_builtin_rejects_num_val_that_empties_a_side(num_val):
    with pytest.raises(ValueError, match=r"prompt_fn\.num_val") as err:
        builtin(num_val=num_val)
    assert "24 built-in prompts" in str(err.value) and "between 1 and 23" in str(err.value)


# text_file -------------------------------------------------------------------------------------

def test_text_file_strips_and_skips_blank_and_comment_lines(tmp_path):
    path = write(tmp_path / "p.txt", ["# a comment", "  a dog running  ", "", "   ",
                                      "\ta cat jumping", "  # indented comment", "a dog running"])
    src = text_file(path)
    assert_disjoint_split(src, ["a dog running", "a cat jumping"])


def test_text_file_splits_by_fraction_keeping_order(tmp_path):
    everything = numbered(20)
    src = text_file(write(tmp_path / "p.txt", everything), val_fraction=0.25)
    assert len(src.val) == 5 and len(src.train) == 15
    assert_disjoint_split(src, everything)
    assert src.train == [p for p in everything if p in src.train]


def test_split_is_deterministic_for_a_seed(tmp_path):
    path = write(tmp_path / "p.txt", numbered(50))
    a, b = text_file(path, seed=3), text_file(path, seed=3)
    assert a == b
    assert {tuple(text_file(path, seed=s).val) for s in range(5)} != {tuple(a.val)}


@pytest.mark.parametrize("n, fraction, n_val", [(2, 0.01, 1), (3, 0.99, 2), (10, 0.1, 1)])
def test_split_keeps_at_least_one_prompt_each_way(tmp_path, n, fraction, n_val):
    src = text_file(write(tmp_path / "p.txt", numbered(n)), val_fraction=fraction)
    assert len(src.val) == n_val and len(src.train) == n - n_val


def test_text_file_val_path_removes_held_out_prompts_from_train(tmp_path):
    path = write(tmp_path / "train.txt", ["a", "b", "c", "d"])
    val_path = write(tmp_path / "val.txt", ["b", "z"])
    src = text_file(path, val_path=val_path)
    assert src.train == ["a", "c", "d"]
    assert src.val == ["b", "z"]


def test_missing_file_names_path_and_knob(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"prompt_fn\.path=") as err:
        text_file(missing)
    assert missing in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"prompt_fn\.val_path="):
        text_file(write(tmp_path / "p.txt", ["a", "b"]), val_path=missing)


def test_missing_relative_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        text_file("rel.txt")
    assert "'rel.txt'" in str(err.value) and str(tmp_path / "rel.txt") in str(err.value)


def test_empty_file_says_it_has_no_prompts(tmp_path):
    path = write(tmp_path / "empty.txt", ["# only a comment", "   ", ""])
    with pytest.raises(ValueError, match="has no prompts") as err:
        text_file(path)
    assert path in str(err.value)


def test_single_prompt_cannot_be_split(tmp_path):
    path = write(tmp_path / "one.txt", ["a lone prompt"])
    with pytest.raises(ValueError) as err:
        text_file(path)
    msg = str(err.value)
    assert path in msg and "1 prompt" in msg and "prompt_fn.val_path" in msg


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_out_of_range_names_the_knob(tmp_path, fraction):
    with pytest.raises(ValueError, match=r"prompt_fn\.val_fraction"):
        text_file(write(tmp_path / "p.txt", numbered(5)), val_fraction=fraction)


def test_val_path_covering_every_prompt_is_an_error(tmp_path):
    path = write(tmp_path / "train.txt", ["a", "b"])
    val_path = write(tmp_path / "val.txt", ["b", "a", "c"])
    with pytest.raises(ValueError, match=r"prompt_fn\.val_path") as err:
        text_file(path, val_path=val_path)
    assert path in str(err.value) and "none to train on" in str(err.value)


# table -----------------------------------------------------------------------------------------

def test_table_reads_a_csv_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,caption,score\n1,"a dog, running",0.5\n2,a cat,0.1\n3,,0.2\n4,a fox,0.3\n')
    src = table(str(path), column="caption", val_fraction=0.3)
    assert_disjoint_split(src, ["a dog, running", "a cat", "a fox"])


def test_table_reads_json_objects_json_strings_and_jsonl(tmp_path):
    objects = tmp_path / "o.json"
    objects.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]))
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["a", "b", "c"]))
    lines = tmp_path / "l.jsonl"
    lines.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c", "x": 1}\n')
    for path in (objects, strings, lines):
        assert_disjoint_split(table(str(path)), ["a", "b", "c"])


def test_table_val_path(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"}\n')
    val = tmp_path / "val.csv"
    val.write_text("prompt\nc\nd\n")
    src = table(str(path), val_path=str(val))
    assert src.train == ["a", "b"] and src.val == ["c", "d"]


def test_table_reads_a_csv_saved_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("prompt,score\na dog,1\na cat,2\n", encoding="utf-8-sig")
    assert_disjoint_split(table(str(path)), ["a dog", "a cat"])


def test_table_missing_column_lists_the_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("caption,score\na dog,1\n")
    with pytest.raises(ValueError, match=r"prompt_fn\.column") as err:
        table(str(path))
    msg = str(err.value)
    assert "'prompt'" in msg and "caption" in msg and "score" in msg and str(path) in msg


def test_table_unsupported_extension(tmp_path):
    path = tmp_path / "p.xlsx"
    path.write_text("whatever")
    with pytest.raises(ValueError, match=r"\.xlsx") as err:
        table(str(path))
    assert ".csv" in str(err.value) and "prompt_fn=text_file" in str(err.value)


def test_table_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"prompt_fn\.path="):
        table(str(tmp_path / "nope.csv"))
    header_only = tmp_path / "h.csv"
    header_only.write_text("prompt\n")
    with pytest.raises(ValueError, match="has no prompts"):
        table(str(header_only))


@pytest.mark.parametrize("name, text, expected", [
    ("d.json", '{"prompt": "a"}', "expected a list"),
    ("bad.json", "[1, 2", "not valid JSON"),
    ("bad.jsonl", '{"prompt": "a"}\n{oops\n', "line 2"),
    ("n.json", "[1, 2]", "row 1 is 1;"),
])
def test_table_malformed_json_is_explained(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as err:
        table(str(path))
    assert str(path) in str(err.value)


# nouns_activities ------------------------------------------------------------------------------

def test_nouns_activities_makes_every_combination():
    nouns, activities = ["a dog", "a cat", "a fox"], ["riding a bike", "playing chess"]
    src = nouns_activities(nouns, activities, val_fraction=0.2)
    assert_disjoint_split(src, [f"{n} {a}" for n in nouns for a in activities])
    assert len(src.val) == 1


def test_nouns_activities_accepts_listconfig_files_and_a_template(tmp_path):
    nouns = write(tmp_path / "nouns.txt", ["# animals", "a dog", "a cat"])
    activities = OmegaConf.create(["surfing", "cooking"])
    src = nouns_activities(nouns, activities, template="{activity} with {noun}", seed=1)
    assert_disjoint_split(src, ["surfing with a dog", "cooking with a dog",
                                "surfing with a cat", "cooking with a cat"])


def test_nouns_activities_errors(tmp_path):
    with pytest.raises(ValueError, match=r"prompt_fn\.nouns is empty"):
        nouns_activities([], ["x"])
    with pytest.raises(FileNotFoundError, match=r"prompt_fn\.activities="):
        nouns_activities(["a dog"], str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match=r"prompt_fn\.template") as err:
        nouns_activities(["a dog"], ["x"], template="{noun} {verb}")
    assert "verb" in str(err.value)
    with pytest.raises(ValueError, match="1 nouns x 1 activities") as err:
        nouns_activities(["a dog"], ["running"])
    assert "prompt_fn.nouns" in str(err.value)


def test_prompt_source_rejects_overlap_and_empty_sides():
    with pytest.raises(ValueError, match="both"):
        PromptSource(train=["a", "b"], val=["b"])
    with pytest.raises(ValueError, match="0 val"):
        PromptSource(train=["a"], val=[])


# conf/prompt_fn/*.yaml -------------------------------------------------------------------------

YAMLS = sorted(CONF_DIR.glob("*.yaml"))


@pytest.fixture
def required_files(tmp_path):
    """Files for each YAML's `???` keys, by (YAML name, key)."""
    return {
        ("text_file", "path"): write(tmp_path / "p.txt", numbered(10)),
        ("table", "path"): write(tmp_path / "p.csv", ["prompt"] + numbered(10)),
        ("images", "path"): write_first_frames(tmp_path / "frames", ["red", "blue", "green", "yellow"]),
    }


def test_every_factory_has_a_yaml():
    assert {p.stem for p in YAMLS} >= {"builtin", "text_file", "table", "nouns_activities"}


@pytest.mark.parametrize("yaml_path", YAMLS, ids=lambda p: p.stem)
def test_yaml_instantiates(yaml_path, required_files):
    cfg = OmegaConf.load(yaml_path)
    # Text prompts in vader/data/prompts.py, image prompts (first frames) in image_prompts.py.
    assert cfg._target_ in (f"vader.data.prompts.{yaml_path.stem}", f"vader.data.image_prompts.{yaml_path.stem}")
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            assert (yaml_path.stem, key) in required_files, f"no test file for {yaml_path.name}:{key}"
            cfg[key] = required_files[(yaml_path.stem, key)]
    src = instantiate(cfg)
    assert isinstance(src, PromptSource)
    assert src.train and src.val and not set(src.train) & set(src.val)


@pytest.mark.parametrize("yaml_path", YAMLS, ids=lambda p: p.stem)
def test_yaml_matches_its_target_signature(yaml_path):
    cfg = OmegaConf.load(yaml_path)
    params = inspect.signature(get_method(cfg._target_)).parameters
    keys = [k for k in cfg if k != "_target_"]
    assert set(keys) <= set(params), f"{yaml_path.name} has keys the factory does not take"
    for key in keys:
        default = params[key].default
        if default is not inspect.Parameter.empty and not OmegaConf.is_missing(cfg, key):
            assert cfg[key] == default, f"{yaml_path.name}:{key} drifted from the code's default"


@pytest.mark.parametrize("yaml_path", YAMLS, ids=lambda p: p.stem)
def test_yaml_header_says_how_to_select_it(yaml_path):
    first = yaml_path.read_text().splitlines()[0]
    assert first.startswith("# ") and f"prompt_fn={yaml_path.stem}" in first


def test_binary_or_folder_prompt_files_are_explained(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc\x80\n")
    (tmp_path / "bin.csv").write_bytes(b"prompt\n\x81more\n")
    with pytest.raises(ValueError, match=r"bin.txt' is not UTF-8 text \(byte 0xff at position 0\)"):
        text_file(str(tmp_path / "bin.txt"))
    with pytest.raises(ValueError, match=r"bin.csv' is not UTF-8 text \(byte 0x81"):
        table(str(tmp_path / "bin.csv"))
    with pytest.raises(FileNotFoundError, match=r"is a folder; give prompt_fn.path="):
        text_file(str(tmp_path))
