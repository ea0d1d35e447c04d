"""Checkpoints: strict loading of the official format (key tree on the meta device, and once with
real full-size tensors), clear errors, our own format round trip, the inspect command."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys

import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.checkpoint import (
    CheckpointError,
    check_state_dict,
    inspect_checkpoint,
    key_prefix,
    load_official_checkpoint,
    load_state_dict_strict,
    main,
    read_checkpoint,
    save_checkpoint,
    summarize_state_dict,
)
from sam4d_core.modeling.configs import get_config
from sam4d_core.modeling.prompts import LidarPrompt, ObjectPrompts
from sam4d_core.modeling.sam4d_base import SAM4D

torch.set_num_threads(1)


def official_meta() -> SAM4D:
    with torch.device("meta"):
        return SAM4D(get_config("sam4d_hiera_s_mink34"))


def official_key_set() -> dict[str, torch.Tensor]:
    """A state dict with exactly the official names and shapes (meta tensors: no memory)."""
    with torch.device("meta"):
        return {
            k: torch.empty(v.shape, dtype=v.dtype) for k, v in official_meta().state_dict().items()
        }


def tiny_official_config():
    """The tiny sizes with the released sine-PE behaviour (what an official file requires) and
    the exact-release mode (what it should run with)."""
    cfg = get_config("sam4d_tiny")
    return dataclasses.replace(
        cfg,
        umpe=dataclasses.replace(cfg.umpe, released_frequency_quirk=True),
        image=dataclasses.replace(cfg.image, exact_release=True),
        point=dataclasses.replace(cfg.point, exact_release=True),
    )


def randomize(model: SAM4D, seed: int = 0) -> SAM4D:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


# ---------------------------------------------------------------------------------------------
# The official key tree.


def test_official_key_set_loads_strictly_on_meta() -> None:
    model = official_meta()
    sd = official_key_set()
    assert len(sd) == 904
    check_state_dict(model, sd, "official keys")
    # The loader's own path: check, then load_state_dict(strict=True) (assign on meta).
    load_state_dict_strict(model, sd, "official keys")
    assert model.union_pe_func.union_pe_layer.frustum.shape == (48, 48, 128, 4)


def test_key_errors_are_listed_by_prefix_with_shapes() -> None:
    model = official_meta()
    sd = official_key_set()
    sd["pure_model.fusion.memory_attention.layers.0.linear1.weightt"] = sd.pop(
        "pure_model.fusion.memory_attention.layers.0.linear1.weight"
    )
    del sd["ego_pose_encoder.d_max"]
    with torch.device("meta"):
        sd["union_pe_func.union_pe_layer.frustum"] = torch.empty(64, 64, 128, 4)
        sd["pure_model.head.sam.extra_thing"] = torch.empty(3)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, sd, "my.pth")
    msg = str(err.value)
    assert msg.startswith("my.pth does not match the model")
    assert "missing keys (model shape) (2):" in msg
    assert "  pure_model.fusion.memory_attention: 1" in msg
    assert "pure_model.fusion.memory_attention.layers.0.linear1.weight [2048, 256]" in msg
    assert "ego_pose_encoder.d_max []" in msg
    assert "unexpected keys (checkpoint shape) (2):" in msg
    assert "pure_model.fusion.memory_attention.layers.0.linear1.weightt [2048, 256]" in msg
    assert "pure_model.head.sam.extra_thing [3]" in msg
    assert "mis-shaped keys (model shape != checkpoint shape) (1):" in msg
    assert "union_pe_func.union_pe_layer.frustum [48, 48, 128, 4] != [64, 64, 128, 4]" in msg


def test_key_prefixes_and_summary() -> None:
    assert key_prefix("pure_model.backbone.image.0.blocks.3.mlp.layers.0.weight") == (
        "pure_model.backbone.image.0"
    )
    assert key_prefix("pure_model.head.sam.sam_mask_decoder.conv_s0.weight") == (
        "pure_model.head.sam.sam_mask_decoder"
    )
    assert key_prefix("maskmem_tpos_enc") == "maskmem_tpos_enc"
    model = official_meta()
    params = {k for k, _ in model.named_parameters()}
    buffers = {k for k, _ in model.named_buffers()}
    rows = {r.prefix: r for r in summarize_state_dict(model.state_dict(), buffers, params)}
    assert sum(r.entries for r in rows.values()) == 904
    assert sum(r.buffer_entries for r in rows.values()) == 169
    point = rows["pure_model.backbone.point.sparse_3d.0"]
    assert (point.entries, point.buffer_entries) == (318, 159)
    assert round(point.parameter_values / 1e6, 1) == 26.9


def test_full_size_official_file_round_trip(tmp_path) -> None:
    """Once with real tensors: 121.8 M random floats in the official format (~3 s, ~1.5 GB)."""
    torch.manual_seed(0)
    src = SAM4D(get_config("sam4d_hiera_s_mink34"))
    path = tmp_path / "sam4d_hieraS_mink34w32.pth"
    torch.save({"model": src.state_dict(), "meta": {"epoch": 35}}, path)
    del src
    model = build_sam4d(checkpoint=path)  # official format -> sam4d_hiera_s_mink34
    assert model.config.name == "sam4d_hiera_s_mink34" and not model.training
    ref = torch.load(path, map_location="cpu", weights_only=True)["model"]
    for k in (
        "maskmem_tpos_enc",
        "pure_model.fusion.memory_encoder.point.fuser.layers.1.conv.kernel",
        "union_pe_func.union_pe_layer.frustum",
    ):
        assert torch.equal(model.state_dict()[k], ref[k])
    path.unlink()


# ---------------------------------------------------------------------------------------------
# Files: official format with the tiny sizes, broken files.


def test_official_format_file_loads_and_needs_the_quirk(tmp_path) -> None:
    cfg = tiny_official_config()
    src = randomize(SAM4D(cfg).eval())
    path = tmp_path / "official_tiny.pth"
    torch.save({"model": src.state_dict()}, path)
    model = load_official_checkpoint(SAM4D(cfg), path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert build_sam4d(cfg, path).config == cfg
    with pytest.raises(CheckpointError, match="released_frequency_quirk=True"):
        load_official_checkpoint(SAM4D(get_config("sam4d_tiny")), path)
    with pytest.raises(CheckpointError, match="released_frequency_quirk=True"):
        build_sam4d("sam4d_tiny", path)
    # Without the exact-release mode the weights load, with a warning.
    plain = dataclasses.replace(cfg, point=get_config("sam4d_tiny").point)
    with pytest.warns(UserWarning, match="point.exact_release=False"):
        load_official_checkpoint(SAM4D(plain), path)
    # An official file of other sizes does not fit the official tree.
    with pytest.raises(CheckpointError, match="does not match the model"):
        build_sam4d(checkpoint=path)


def test_broken_files_name_the_file(tmp_path) -> None:
    cfg = tiny_official_config()
    good = tmp_path / "good.pth"
    torch.save({"model": SAM4D(cfg).state_dict()}, good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: .*(truncated|corrupted)"):
        read_checkpoint(truncated)

    corrupted = tmp_path / "corrupted.pth"
    middle = len(data) // 2
    corrupted.write_bytes(data[:middle] + bytes(4096) + data[middle + 4096 :])
    with pytest.raises(CheckpointError, match=r"corrupted\.pth"):
        build_sam4d(cfg, corrupted)

    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a PyTorch checkpoint"):
        read_checkpoint(text)

    with pytest.raises(CheckpointError, match=r"missing\.pth: no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pth")

    bare = tmp_path / "bare.pth"
    torch.save(SAM4D(cfg).state_dict(), bare)  # a state dict without the "model" level
    with pytest.raises(CheckpointError, match=r"bare\.pth: no 'model' state dict"):
        read_checkpoint(bare)


# ---------------------------------------------------------------------------------------------
# Our own format.


def _outputs(model: SAM4D):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    pts = rng.uniform([2, -6, -1], [15, 6, 1], size=(300, 3)).astype(np.float32)
    K = np.array([[60.0, 0, 50], [0, 60.0, 30], [0, 0, 1]])
    cfl = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0.5], [1, 0, 0, 0], [0, 0, 0, 1]])
    with torch.inference_mode():
        f = model.encode_frame([img], [K], [cfl], pts)
        out = model.track_step(f, [ObjectPrompts(lidar=LidarPrompt([[8.0, 0, 0]], [1]))])
        mem = model.encode_memory(f, out)[0]
    return out.image.mask_logits, out.lidar.point_logits, mem.lidar_tokens


def test_own_checkpoint_round_trip(tmp_path) -> None:
    model = SAM4D(get_config("sam4d_tiny")).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
    path = save_checkpoint(model, tmp_path / "run" / "last.pt", extra={"step": 123})
    ckpt = read_checkpoint(path)
    assert ckpt.config == model.config and ckpt.extra == {"step": 123}
    again = build_sam4d(checkpoint=path)  # no config name needed
    assert again.config == model.config
    for a, b in zip(_outputs(model), _outputs(again), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert build_sam4d("sam4d_tiny", path).config == model.config
    with pytest.raises(CheckpointError, match="differs from the requested"):
        build_sam4d("sam4d_small", path)
    with pytest.raises(ValueError, match="reserved names"):
        save_checkpoint(model, tmp_path / "x.pt", extra={"config": 1})
    with pytest.raises(ValueError, match="needs a config"):
        build_sam4d()


def test_inspect_command(tmp_path) -> None:
    model = SAM4D(get_config("sam4d_tiny"))
    own = save_checkpoint(model, tmp_path / "tiny.pt")
    buf = io.StringIO()
    assert inspect_checkpoint(own, out=buf) == 0
    text = buf.getvalue()
    n_entries = len(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    assert "format: sam4d_ros.checkpoint v1, config 'sam4d_tiny'" in text
    assert '"d_model": 32' in text
    assert f"entries: {n_entries} (" in text and f"({n_params:,} values)" in text
    assert "pure_model.backbone.point.sparse_3d.0" in text
    assert "matches the 'sam4d_tiny' module tree: yes" in text

    official = tmp_path / "official_tiny.pth"
    sd = model.state_dict()
    sd.pop("no_mem_embed")
    torch.save({"model": sd}, official)
    buf = io.StringIO()
    assert inspect_checkpoint(official, out=buf) == 1
    assert "format: official" in buf.getvalue() and "NO" in buf.getvalue()

    assert main(["inspect", str(tmp_path / "absent.pt")]) == 2
    proc = subprocess.run(
        [sys.executable, "-m", "sam4d_core.checkpoint", "inspect", str(own)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "module tree: yes" in proc.stdout
