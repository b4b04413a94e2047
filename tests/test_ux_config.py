"""The config file: profiles with one or several sources, flags over the file, and
``blanket config check`` naming the line of every problem."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from blanket import config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "config.toml"


pytest_plugins = ["uxutil"]
pytestmark = pytest.mark.usefixtures("no_user_config")


def write_config(home: Path, text: str) -> Path:
    path = home / "blanket" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.check(path)[1]


def test_the_example_config_is_valid() -> None:
    loaded, found = config.check(EXAMPLE)
    assert found == []
    assert loaded is not None and loaded.default == "laptop"
    offsite = loaded.profile("offsite")
    assert [(Path(t.source).name, t.repository) for t in offsite.targets] == [
        ("Documents", "s3://my-bucket/documents"),
        ("Documents", "/media/usb/blanket-documents"),
        ("Pictures", "s3://my-bucket/pictures"),
    ]
    assert offsite.targets[2].excludes == [".cache/", "*.tmp", "node_modules/", "*.xcf"]
    assert offsite.get("limit_upload") == 2 << 20 and offsite.get("max_time") == 7200
    assert loaded.profile("laptop").get("key") == "0123456789ABCDEF0123456789ABCDEF01234567"
    assert loaded.profile("laptop").get("keep_history") is True


def test_keep_history_reaches_backup_from_the_flag_and_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blanket.cli import parser_for
    from blanket.commands import backup

    def opts(words: list[str]) -> bool:
        args = parser_for(words).parse_args(words)
        return backup.options(args, backup.targets(args)[0]).keep_history

    base = ["backup", "--repo", str(tmp_path / "r"), "--cap", "1G", str(tmp_path)]
    assert opts(base) is False
    assert opts([*base, "--keep-history"]) is True
    home = tmp_path / "home"
    write_config(home, f'[profiles.a]\nsource = "{tmp_path}"\nrepository = "{tmp_path}/r"\n'
                 'cap = "1G"\nkeep_history = true\n')  # fmt: skip
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    assert opts(["backup", "--profile", "a"]) is True


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('default = "x"\n[profiles.a]\nsource = "/s"\nrepository = "/r"\n', 1, "names no profile"),
        ('[profiles.a]\nsource = "/s"\nrepository = "/r"\ncap = "5X"\n', 4, "is not a size"),
        ('[profiles.a]\nsource = "/s"\n\nexclude = ["x"]\nrepository = "/r"\n', 4, "'excludes'"),
        ('[profiles.a]\nmax_time = "soon"\n', 2, "is not a duration"),
        ('[profiles.a]\nkeep_history = "yes"\n', 2, "must be true or false"),
        ('[profiles.a]\nsource = "/s"\nrepository = 5\n', 3, "must be a URL"),
        ('[profiles.a]\nlimit_upload = "fast"\n', 2, "limit_upload: 'fast' is not a size"),
        ("[defaults]\nsources = []\n", 2, "unknown setting"),
        ('[profiles.a]\nsource = "/s"\n', 1, "names no repository"),
        ('[profiles.a]\nsource = "/s"\nrepository = "/r"\nsource2 = 1\n', 4, "unknown"),
        ('[profiles.a]\nsource = "/s"\nrepository = "/r"\nexcludes = "*.tmp"\n', 4, "a list"),
        ("[profiles.a\n", 1, "not valid TOML"),
        ('[profiles.a]\nsource = "/s"\nrepository = "/r"\nsource = "/t"\n', 4, "not valid TOML"),
        (
            '[[profiles.w.sources]]\nsource = "/a"\nrepository = "/r"\n\n'
            '[[profiles.w.sources]]\nsource = "/b"\nrepository = "/r"\n',
            7,
            "one repository backs up one source",
        ),
        (
            '[[profiles.w.sources]]\nsource = "/a"\nrepository = "/r1"\n\n'
            '[[profiles.w.sources]]\nsource = "/b"\nrepositry = "/r2"\n',
            7,
            "did you mean 'repository'",
        ),
    ],
)
def test_check_names_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) >= 1
    assert any(p.startswith(f"{tmp_path / 'c.toml'}:{line}: ") and words in p for p in found), found
    assert all("\n" not in p for p in found)


def test_config_check_command(bl, tmp_path: Path, no_user_config: Path) -> None:
    missing = bl("config", "check", check=2)
    assert "there is no config file at" in missing.err and "examples/config.toml" in missing.err
    path = write_config(no_user_config, '[profiles.a]\ncap = "1Q"\npack_size = "big"\n')
    bad = bl("config", "check", check=2)
    assert bad.err.splitlines() == [
        f"blanket: error: {path}:2: profiles.a.cap: '1Q' is not a size; write e.g. 512K, "
        "32M, 2G or plain bytes",
        f"blanket: error: {path}:3: profiles.a.pack_size: 'big' is not a size; write e.g. "
        "512K, 32M, 2G or plain bytes",
    ]
    js = bl("config", "check", "--json", check=2)
    assert [json.loads(line)["type"] for line in js.out.splitlines()] == ["error", "error"]
    good = bl("config", "check", "--config", str(EXAMPLE), check=0)
    assert good.out.startswith(f"{EXAMPLE}: OK; profiles: laptop (1 source(s)) [default]")
    shown = bl("config", "show", "--config", str(EXAMPLE), check=0).out
    assert "  cap = 400.0 GiB" in shown and "[laptop] (default)" in shown
    other = bl("ls", "--config", str(tmp_path / "none.toml"), "--profile", "x", check=2)
    assert "config file" in other.err and "does not exist" in other.err


def test_a_profile_backs_up_each_source_into_its_repository(
    bl, keyring, tmp_path: Path, no_user_config: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for src in (a, b):
        src.mkdir()
        (src / "keep.txt").write_text(f"in {src.name}\n")
        (src / "skip.tmp").write_text("excluded\n")
        (src / "skip.log").write_text("excluded for b only\n")
    ra, rb1, rb2 = (str(tmp_path / n) for n in ("ra", "rb1", "rb2"))
    write_config(
        no_user_config,
        f'default = "both"\n[defaults]\nkey = "{keyring.fingerprint}"\n'
        f'[profiles.both]\nexcludes = ["*.tmp"]\nif_older_than = "1h"\n'
        f'[[profiles.both.sources]]\nsource = "{a}"\nrepository = "{ra}"\n'
        f'[[profiles.both.sources]]\nsource = "{b}"\nrepository = ["{rb1}", "{rb2}"]\n'
        f'excludes = ["*.log"]\n'
        f'[profiles.solo]\nsource = "{a}"\nrepository = "{ra}"\n',
    )
    made = bl("init", check=0).out
    assert made.count("created repository") == 3
    again = bl("init", check=0).out
    assert again.count("already holds a blanket repository") == 3
    run = bl("backup", check=0).out.splitlines()
    assert len(run) == 3 and all("pass complete" in line for line in run)
    assert any(line.startswith(f"{b} -> {rb2}: layer 0") for line in run)
    assert bl("ls", "--repo", ra, check=0).out.count("\n") == 3  # ., keep.txt, skip.log
    assert "skip.log" not in bl("ls", "--repo", rb1, check=0).out

    (a / "new.txt").write_text("new\n")
    skipped = bl("backup", check=0).out
    assert skipped.count("last commit is recent; nothing to do") == 3
    forced = bl("backup", "--if-older-than", "0s", "--repo", ra, check=0).out
    assert forced.startswith("layer 1: committed 1 pack(s)")
    one = bl("backup", str(b), "--profile", "both", "--if-older-than", "0s", check=0).out
    assert one.count("layer 1: committed 0 pack(s)") == 2

    listed = bl("ls", "--profile", "solo", check=0).out
    assert "new.txt" in listed
    several = bl("ls", check=2)
    assert "reads one repository, not 3" in several.err
    status = bl("status", "--crit-age", "1d", check=0).out.splitlines()[0]
    assert status.startswith("BLANKET OK - ") and status.count("last commit") == 3
    out = tmp_path / "out"
    mixed = bl("restore", "--to", str(out), check=2)
    assert "backs up 2 sources" in mixed.err
    bl("restore", "--to", str(out), "--repo", rb1, "--repo", rb2, check=0)
    assert (out / "keep.txt").read_text() == "in b\n"
    assert not os.path.exists(out / "skip.tmp")


def test_commands_explain_what_is_missing(bl, tmp_path: Path, no_user_config: Path) -> None:
    r = bl("backup", check=2)
    assert r.err.startswith("blanket: error: no source given;") and len(r.err.splitlines()) == 1
    write_config(no_user_config, '[profiles.p]\nrepository = "/nowhere"\n')
    r = bl("backup", "--profile", "p", check=2)
    assert "profile p has no source" in r.err
    r = bl("backup", "--profile", "q", check=2)
    assert "no profile 'q'" in r.err and "profiles: p" in r.err
    write_config(no_user_config, "default = 3\n")
    r = bl("status", check=2)
    assert ":1: default: names no profile" in r.err
