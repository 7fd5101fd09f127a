"""mamba-ssm kernel path vs our PyTorch path: same outputs, same gradients, same logits (CUDA with mamba-ssm only).

Skipped wherever CUDA or mamba-ssm is missing. Run on a GPU machine with
`pip install mamba-ssm causal-conv1d --no-build-isolation` (restrict the build to the GPU's architecture, e.g.
`TORCH_CUDA_ARCH_LIST=9.0`), then `pytest tests/test_kernel_parity.py`.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import hybrid_vlm
from hybrid_vlm import benchmark as bm
from hybrid_vlm.path_report import compute_paths
from hybrid_vlm.ssm import Mamba1Mixer, Mamba2Mixer, kernels_available

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None),
    reason="kernel parity needs CUDA and mamba-ssm",
)

# fp32 tolerances: the kernels accumulate in another order (and Mamba-2's in chunks of another shape)
RTOL, ATOL = 2e-3, 2e-3


def _run(module: torch.nn.Module, path: str | None, hidden: torch.Tensor, setter) -> tuple[torch.Tensor, dict]:
    setter(path)
    module.zero_grad(set_to_none=True)
    x = hidden.clone().requires_grad_(True)
    out = module(x)
    out = out if isinstance(out, torch.Tensor) else out[0]
    (out.float() * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.detach().clone()
    return out.detach(), grads


@pytest.mark.parametrize("mixer_class", [Mamba2Mixer, Mamba1Mixer])
@pytest.mark.parametrize("length", [1, 63, 257])
def test_mixer_kernels_match_torch_path(mixer_class, length):
    torch.manual_seed(0)
    mixer = mixer_class(64, d_state=16).cuda()
    assert kernels_available(mixer.kind)["scan"], "mamba-ssm is installed but its kernels do not import"
    hidden = torch.randn(2, length, 64, device="cuda")

    def setter(path):
        mixer.compute_path = path

    kernel_out, kernel_grads = _run(mixer, None, hidden, setter)
    assert mixer.compute_path == "kernels", "the kernel path must be reached automatically when installed"
    torch_out, torch_grads = _run(mixer, "torch", hidden, setter)
    torch.testing.assert_close(kernel_out, torch_out, rtol=RTOL, atol=ATOL)
    assert kernel_grads.keys() == torch_grads.keys()
    for name in torch_grads:
        torch.testing.assert_close(kernel_grads[name], torch_grads[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("preset", ["vamba-tiny", "mambavlm-tiny"])
def test_model_logits_and_gradients_kernels_vs_torch(preset):
    """Whole tiny models: logits and every parameter's gradient agree between the two paths of our SSMs."""
    model, processor = hybrid_vlm.from_preset(preset, device="cuda")
    ours = [m for m in model.modules() if hasattr(m, "compute_path") and hasattr(m, "kind")]
    assert ours and all(m.compute_path == "kernels" for m in ours)
    assert any("kernels" in p.path for p in compute_paths(model))
    from PIL import Image

    image = Image.new("RGB", (64, 48), (120, 30, 200))
    inputs = processor(images=image, text="<image>\nWhat colour is this?", return_tensors="pt").to("cuda")

    def run(path):
        for mixer in ours:
            mixer.compute_path = path
        model.zero_grad(set_to_none=True)
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.logits.detach(), grads

    kernel_logits, kernel_grads = run(None)
    torch_logits, torch_grads = run("torch")
    torch.testing.assert_close(kernel_logits, torch_logits, rtol=RTOL, atol=ATOL)
    for name in torch_grads:
        torch.testing.assert_close(kernel_grads[name], torch_grads[name], rtol=1e-2, atol=1e-3, msg=name)


def test_benchmark_reports_kernel_path_on_cuda():
    bench = bm.BenchModel.build("vamba", "tiny", device="cuda")
    assert bench.describe()["ssm_path"] == "kernels"
