"""Bad input to the splatting entry points gets an error that says what is wrong and what to
do: `rasterize` given [N, 3] means2d or float radii (both used to render a wrong picture
quietly), and a Gaussians scene whose fields mix dtypes or devices."""
import pytest
import torch

from gpulab import runtime, splat

DEV = runtime.device


def _inputs(n: int = 3, width: int = 16, height: int = 16) -> dict:
    """Valid rasterize arguments: n Gaussians with footprint parameters and RGB features."""
    gen = torch.Generator().manual_seed(0)
    means2d = torch.rand(n, 2, generator=gen) * torch.tensor([width, height])
    conics = torch.tensor([[0.1, 0.0, 0.1]]).repeat(n, 1)
    opacities = torch.full((n,), 0.8)
    params = splat.gaussian_params(means2d, conics, opacities)
    return dict(params=params.to(DEV), features=torch.rand(n, 3, generator=gen).to(DEV),
                means2d=means2d.to(DEV), radii=torch.full((n,), 5, dtype=torch.int32, device=DEV),
                depths=torch.arange(1.0, n + 1).to(DEV), width=width, height=height)


def test_valid_inputs_render():
    image, transmittance, _ = splat.rasterize(**_inputs(), backend="torch")
    assert image.shape == (16, 16, 3) and transmittance.shape == (16, 16)
    assert transmittance.min() < 1  # the Gaussians covered something


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_means2d_with_three_columns(backend):
    args = _inputs()
    args["means2d"] = torch.cat([args["means2d"], args["depths"][:, None]], dim=1)
    with pytest.raises(ValueError, match=r"means2d must have shape \[N, 2\], got \[3, 3\]"):
        splat.rasterize(**args, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_float_radii(backend):
    args = _inputs()
    args["radii"] = args["radii"].float() + 0.5
    with pytest.raises(TypeError, match=r"radii must be int32 .* got torch.float32; round float radii up: "
                                        r"radii.ceil\(\).to\(torch.int32\)"):
        splat.rasterize(**args, backend=backend)


def test_other_bad_rasterize_inputs_are_named():
    cases = {
        "radii": (torch.full((4,), 5, dtype=torch.int32, device=DEV), r"radii must have shape \[3\]"),
        "depths": (torch.arange(3, device=DEV), "depths must be a float tensor"),
        "params": (torch.zeros(3, 5, device=DEV), r"params must have shape \[3, 6\]"),
        "features": (torch.zeros(3, 3, dtype=torch.float64, device=DEV), "features are torch.float64 but params"),
        "background": (torch.zeros(4, device=DEV), r"background must have shape \[3\]"),
        "width": (0, "width must be a positive int"),
        "height": (16.5, "height must be a positive int"),
    }
    for name, (value, message) in cases.items():
        args = _inputs()
        args[name] = value
        with pytest.raises((TypeError, ValueError), match=message):
            splat.rasterize(**args, backend="torch")
    args = _inputs()
    args["means2d"] = args["means2d"].tolist()
    with pytest.raises(TypeError, match="means2d must be a torch.Tensor, got list"):
        splat.rasterize(**args)


def _scene_fields(n: int = 2) -> dict:
    return dict(means=torch.zeros(n, 3), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                scales=torch.full((n, 3), 0.1), opacities=torch.full((n,), 0.5), sh=torch.zeros(n, 1, 3))


def test_gaussians_of_mixed_dtypes():
    fields = _scene_fields()
    fields["opacities"] = fields["opacities"].double()
    with pytest.raises(TypeError, match=r"one floating dtype .* opacities float64.* \(convert them alike"):
        splat.Gaussians(**fields)
    fields = _scene_fields()
    fields["means"] = fields["means"].to(torch.int64)
    with pytest.raises(TypeError, match="means int64"):
        splat.Gaussians(**fields)


def test_gaussians_of_one_dtype_are_accepted():
    assert len(splat.Gaussians(**_scene_fields())) == 2
    double = {k: v.double() for k, v in _scene_fields().items()}
    assert splat.Gaussians(**double).means.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices (a CUDA GPU)")
def test_gaussians_on_two_devices():
    fields = _scene_fields()
    fields["sh"] = fields["sh"].cuda()
    with pytest.raises(ValueError, match=r"one device.*\.to\(device\)"):
        splat.Gaussians(**fields)
