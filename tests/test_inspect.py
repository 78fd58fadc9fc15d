"""``animatediff inspect``: bundled names resolved as ``generate`` resolves them; one error line per bad file."""

from __future__ import annotations

import pytest

from animatediff import bundled
from animatediff.cli import main

import fixtures
from tiny_models import save_diffusers_folder, tiny_base_model

needs_bundle = pytest.mark.skipif(not bundled.is_available(), reason="the bundled demo model is not installed")

# bundled name -> (what inspect calls it, the file generate would load for it)
BUNDLED = {
    "demo": ("motion-module v3", lambda: bundled.resolve(None, None).motion_module),
    "base": ("diffusers-folder", lambda: bundled.resolve("base", None).model),
    "personal": ("diffusers-folder", lambda: bundled.resolve("personal", None).model),
    "personal-lora": ("lora", lambda: bundled.resolve_addons(loras=[("personal-lora", 1.0)])[0][0][0]),
    "domain-adapter": ("domain-adapter", lambda: bundled.resolve_addons(adapter=("domain-adapter", 1.0))[2][0]),
    "ZoomIn": ("motion-lora", lambda: bundled.resolve_addons(motion_loras=[("ZoomIn", 1.0)])[1][0][0]),
}


@needs_bundle
@pytest.mark.parametrize("name", list(BUNDLED))
def test_inspect_describes_the_file_generate_loads_for_a_bundled_name(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local file of that name
    kind, generate_loads = BUNDLED[name]
    assert main(["inspect", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(kind) and f"  bundled file: {generate_loads()}\n" in out, out


def test_a_local_file_named_like_a_bundled_name_wins(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_diffusers_folder(tiny_base_model(), tmp_path / "personal")
    assert main(["inspect", "personal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("diffusers-folder") and "bundled file" not in out, out


def test_an_unknown_name_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "ZoomSideways"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith("error: ZoomSideways: no such file or folder"), err
    assert "ZoomIn" in err[0]  # the names it would have taken


def test_every_bad_file_gets_its_line_and_good_ones_are_still_described(tmp_path, capsys):
    good = fixtures.save(fixtures.motion_lora_state_dict("v2"), tmp_path / "v2_lora_ZoomIn.ckpt")
    pickle = fixtures.write_code_execution_pickle(tmp_path / "evil.ckpt")
    corrupt = fixtures.write_corrupt(tmp_path / "corrupt.ckpt")
    missing = tmp_path / "missing.safetensors"
    assert main(["inspect", str(pickle), str(good), str(corrupt), str(missing)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert [line.split(": ")[1] for line in err] == [str(p) for p in (pickle, corrupt, missing)], err
    assert captured.out.startswith("motion-lora") and captured.out.count("parameters") == 1, captured.out
