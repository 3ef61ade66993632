"""TEST.AMP_DTYPE "auto": bf16 on CPUs with native bf16 units, fp32 elsewhere."""

from pathlib import Path

import pytest
import torch

from effdetmask.modeling import inference
from effdetmask.modeling.inference import (
    cpu_has_native_bf16,
    inference_context,
    resolve_amp_dtype,
)

REPO = Path(__file__).resolve().parents[2]
CPUINFO = "processor\t: {i}\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {extra}\n\n"


def fake_cpuinfo(tmp_path, extra: str) -> str:
    path = tmp_path / f"cpuinfo_{extra.replace(' ', '_') or 'plain'}"
    path.write_text("".join(CPUINFO.format(i=i, extra=extra) for i in range(2)))
    return str(path)


@pytest.mark.parametrize("extra,native", [
    ("", False), ("avx512f avx512_vnni", False), ("avx512f avx512_bf16", True),
    ("amx_tile amx_bf16", True), ("avx512_bf16x", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, extra, native):
    assert cpu_has_native_bf16(fake_cpuinfo(tmp_path, extra)) is native


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_per_device(monkeypatch, native):
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    assert resolve_amp_dtype("auto", torch.device("cpu")) == ("bf16" if native else "")
    assert resolve_amp_dtype("auto", torch.device("cuda")) == ""  # GPUs keep fp32 unless asked
    for explicit in ("", "bf16", "fp16"):
        assert resolve_amp_dtype(explicit, torch.device("cpu")) == explicit


def test_auto_context_runs_matmul_in_the_resolved_dtype(monkeypatch):
    a = torch.randn(4, 8)
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda native=native: native)
        with inference_context(torch.device("cpu"), "auto"):
            assert (a @ a.T).dtype == dtype


def test_unknown_amp_dtype_names_the_choices():
    with pytest.raises(ValueError, match="TEST.AMP_DTYPE must be one of"):
        resolve_amp_dtype("int8", torch.device("cpu"))


def test_bf16_inference_stays_close_to_fp32():
    """The bf16 path on a tiny d0: dense outputs (class logits, box codes) within bf16 rounding of
    fp32 relative to their scale, and the full forward returns the same instances structure with
    finite values (accuracy on a trained model: benchmarks/precision_parity.py)."""
    from effdetmask.config import RANDOM_INIT_OPTS, setup_cfg
    from effdetmask.modeling import build_model
    from effdetmask.modeling.meta_arch import normalize_images

    torch.manual_seed(0)
    cfg = setup_cfg(str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml"), [
        *RANDOM_INIT_OPTS, "INPUT.SIZE", "128", "TEST.SCORE_THRESH", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", "5", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g),
              "image_id": i, "height": 128, "width": 128, "scale": 1.0} for i in range(2)]
    images = normalize_images(batch, model.pixel_mean, model.pixel_std)
    with torch.inference_mode():
        _, cls32, box32 = model.dense_forward(images)
        with inference_context(torch.device("cpu"), "bf16"):
            _, cls16, box16 = model.dense_forward(images)
        out = model(batch)
        with inference_context(torch.device("cpu"), "bf16"):
            out16 = model(batch)
    for a, b in zip(cls32 + box32, cls16 + box16):
        assert b.dtype == torch.bfloat16
        scale = a.abs().max().clamp(min=1e-3)
        assert ((a - b.float()).abs().max() / scale) < 0.05
    for o32, o16 in zip(out, out16):
        a, b = o32["instances"], o16["instances"]
        assert set(a) == set(b) and len(b["scores"]) == 5
        assert torch.isfinite(b["boxes"]).all() and b["masks"].dtype == torch.bool
