"""A fusion operation of a kind the pipeline does not know is refused when it is made (the
pipeline sorts operations by kind, so it used to drop such an op and return its input)."""
import re

import pytest
import torch

from gpulab import fusion as fk
from gpulab.fusion.ops import Op


def _square_code(ins, outs, params):
    return [f"{o} = {x} * {x}" for x, o in zip(ins, outs)]


def test_an_op_of_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"kind 'mapp'; the kinds are 'read', 'map', 'reduce'"):
        Op("square", "mapp", emit=_square_code, torch_fn=lambda x, p: x * x)


def test_read_and_reduce_ops_need_a_name_the_generator_knows():
    with pytest.raises(ValueError, match=r"no reduce operation 'median'.*'sum', 'mean', 'max', 'min'"):
        Op("median", "reduce", torch_fn=lambda y, dims: y.median())
    with pytest.raises(ValueError, match=r"no read operation 'flip'.*'crop', 'resize'"):
        Op("flip", "read")


def test_a_map_op_needs_its_code_and_its_torch_twin():
    with pytest.raises(ValueError, match="needs emit:"):
        Op("square", "map", torch_fn=lambda x, p: x * x)
    with pytest.raises(ValueError, match="needs emit and torch_fn"):
        Op("square", "map")


def test_a_hand_made_op_runs_in_a_chain():
    """The checks refuse only what is wrong: a well-formed op of a known kind still fuses."""
    square = Op("my_square", "map", emit=_square_code, torch_fn=lambda x, p: x * x, label="my_square()")
    x = torch.arange(-3.0, 4.0).to(fk.Pipeline(fk.relu()).params.device)
    out = fk.Pipeline(square, fk.add(1.0))(x)
    torch.testing.assert_close(out, x * x + 1)


def test_the_library_ops_pass_the_checks():
    chain = [fk.crop(0, 0, 2, 2), fk.resize(3, 3), fk.affine(2, 1), fk.relu(), fk.reduce_mean()]
    assert [op.kind for op in chain] == ["read", "read", "map", "map", "reduce"]


def test_map_op_makes_a_reusable_operation():
    import torch.nn.functional as F
    softsign = fk.map_op("softsign", "{x} / (float32(1.0) + abs({x}))", lambda x, p: F.softsign(x))
    scaled = [fk.map_op("scaled", "{x} * {p0}", lambda x, p: x * p[0], params=(v,)) for v in (2.0, -3.0)]
    x = torch.linspace(-4, 4, 37).to(fk.Pipeline(fk.relu()).params.device)
    pipe = fk.Pipeline(fk.affine(2.0, 0.5), softsign, scaled[0], fk.relu())
    torch.testing.assert_close(pipe(x), pipe.reference(x))
    # other parameter values: the same compiled kernel
    assert fk.Pipeline(scaled[0]).kernel() is fk.Pipeline(scaled[1]).kernel()


def test_an_op_named_like_another_but_with_other_code_gets_its_own_kernel():
    mine = fk.map_op("relu", "{x} * float32(2.0)", lambda x, p: x * 2)       # same name, other code
    x = torch.tensor([-1.0, 3.0]).to(fk.Pipeline(fk.relu()).params.device)
    assert fk.Pipeline(mine).kernel() is not fk.Pipeline(fk.relu()).kernel()
    torch.testing.assert_close(fk.Pipeline(mine)(x), x * 2)


@pytest.mark.parametrize("template, params, words", [
    ("{y} + 1", (), "using {x}"),
    ("{x} * {beta}", (1.0,), "{beta}"),
    ("{x} * {p1}", (1.0,), "{p1} but the op has 1 parameter"),
])
def test_map_op_refuses_bad_templates(template, params, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        fk.map_op("bad", template, lambda x, p: x, params=params)
    with pytest.raises(TypeError, match="torch twin"):
        fk.map_op("bad", "{x}", "not a function")
    with pytest.raises(ValueError, match="identifier"):
        fk.map_op("two words", "{x}", lambda x, p: x)


def test_gray_weights_are_torchvisions():
    # torchvision.transforms._functional_tensor.rgb_to_grayscale: 0.2989 r + 0.587 g + 0.114 b
    assert fk.GRAY_WEIGHTS == (0.2989, 0.587, 0.114)
    rgb = torch.rand(5, 4, 3).to(fk.Pipeline(fk.relu()).params.device)
    expected = 0.2989 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    torch.testing.assert_close(fk.Pipeline(fk.rgb_to_gray(), channels=3)(rgb), expected)
