"""The models on the labelled synthetic sweep: the CSV round trip, splits, scores, the
three models fit and predict, and the shape split holds out whole shapes."""
import numpy as np
import pytest

from gpulab.gemm import models as M


@pytest.fixture(scope="module")
def rows():
    return M.synthetic_sweep(shapes=24, seed=1)


def test_csv_round_trip_and_refusal(rows, tmp_path):
    path = M.write_sweep(rows, tmp_path / "sweep.csv")
    back = M.read_sweep(path)
    assert len(back) == len(rows) and back[3]["m"] == rows[3]["m"] and back[3]["time_ms"] == pytest.approx(rows[3]["time_ms"])
    assert all(r["source"].startswith("synthetic") for r in back)
    (tmp_path / "bad.csv").write_text("m,n\n1,2\n")
    with pytest.raises(ValueError, match="not a sweep file"):
        M.read_sweep(tmp_path / "bad.csv")


def test_shape_split_holds_out_whole_shapes(rows):
    train, test = M.shape_split(rows, 0.25, seed=2)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(rows)))
    seen = {(rows[i]["m"], rows[i]["n"], rows[i]["k"]) for i in train}
    assert not seen & {(rows[i]["m"], rows[i]["n"], rows[i]["k"]) for i in test}
    train_r, test_r = M.random_split(len(rows), 0.2, seed=2)
    assert len(test_r) == round(0.2 * len(rows))
    leaked = seen_r = {(rows[i]["m"], rows[i]["n"], rows[i]["k"]) for i in train_r}
    assert seen_r & {(rows[i]["m"], rows[i]["n"], rows[i]["k"]) for i in test_r}, "a random split leaks shapes"
    with pytest.raises(ValueError):
        M.shape_split(rows, 1.0)


def test_score_known_values():
    s = M.score([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
    assert s == {"r2": 1.0, "mean_pct": 0.0, "median_pct": 0.0}
    s = M.score([1.0, 2.0], [1.5, 2.0])
    assert s["mean_pct"] == pytest.approx(25.0) and s["median_pct"] == pytest.approx(25.0)
    assert s["r2"] == pytest.approx(1 - 0.25 / 0.5)


@pytest.mark.parametrize("model", [M.ForestModel, M.AnalyticModel, M.HybridModel])
def test_models_fit_and_predict(rows, model):
    result = M.evaluate(model(), rows, M.shape_split(rows, 0.25, seed=0))
    assert set(result) == {"time", "power", "energy", "train", "test"}
    assert np.isfinite(result["time"]["r2"]) and result["time"]["median_pct"] >= 0
    if model is not M.ForestModel:   # the analytic form suits this synthetic machine
        assert result["time"]["median_pct"] < 15


def test_analytic_model_refuses_an_unknown_kernel(rows):
    model = M.AnalyticModel().fit([r for r in rows if r["kernel"] != "regtile2d"])
    with pytest.raises(ValueError, match="not fitted on kernel"):
        model.predict([r for r in rows if r["kernel"] == "regtile2d"][:1])
