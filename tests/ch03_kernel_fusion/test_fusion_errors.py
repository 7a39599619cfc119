"""A fusion operation of a kind the pipeline does not know is refused when it is made (the
pipeline sorts operations by kind, so it used to drop such an op and return its input)."""
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
