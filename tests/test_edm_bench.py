"""bench/edm_design_space.py: the equal-budget configs, the paired statistics and the table
(fast), and a tiny end-to-end run on the checkerboard (slow)."""
import json

import numpy as np
import pytest

from bench import edm_design_space as eds
from common.errors import UserError


def test_equal_budget_configs_share_steps_and_batch():
  configs = eds.equal_budget_configs("digits", 37, 16, ["edm", "vp", "rf"])
  assert [c.training.sde for c in configs.values()] == ["edm", "vpsde", "rectified_flow"]
  for c in configs.values():
    assert (c.training.n_iters, c.training.batch_size, c.training.snapshot_freq) == (37, 16, 37)
  assert configs["rf"].data.centered and not configs["vp"].data.centered
  # Defaults: the EDM config's budget.
  toy = eds.equal_budget_configs("toy", None, None, ["edm", "rf"])
  assert {c.training.n_iters for c in toy.values()} == {3000}
  assert {c.training.batch_size for c in toy.values()} == {512}
  with pytest.raises(UserError, match="unknown"):
    eds.equal_budget_configs("toy", 1, 1, ["ve"])
  with pytest.raises(UserError, match="--part"):
    eds.equal_budget_configs("cifar", 1, 1, ["edm"])


def test_paired_mean_and_standard_error():
  # d = (1, 2, 2): mean 5/3, sample std sqrt(1/3), standard error sqrt(1/3) / sqrt(3) = 1/3.
  m, se = eds.paired([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
  np.testing.assert_allclose([m, se], [5 / 3, 1 / 3], rtol=1e-12)
  assert eds.paired([1.0], [0.5]) == (0.5, None)


def test_table_rows_and_paired_columns():
  def form(name, offset, bpd):
    return dict(formulation=name, floor=0.05, runs=[
        dict(sampler="edm_heun", target_nfe=10, nfe=9, sw_chunks=[0.1 + offset, 0.2 + offset]),
        dict(sampler="dpm_solver++-2M", target_nfe=10, nfe=10,
             sw_chunks=[0.3 + offset, 0.1 + offset])], bpd=bpd)
  result = dict(formulations=[form("edm", 0.0, [1.0, 2.0]), form("vp", 0.5, [1.5, 2.0])])
  text = eds.table(result)
  # Actual NFE shown where it differs; EDM - VP is -0.5 in every chunk (standard error 0).
  assert "| edm_heun | 10 | 0.1500 ± 0.0500 [9] | 0.6500 ± 0.0500 [9] | -0.5000 ± 0.0000 |" in text
  assert "| dpm_solver++-2M | 10 | 0.2000 ± 0.1000 | 0.7000 ± 0.1000 | -0.5000 ± 0.0000 |" in text
  assert "edm - vp -0.250 ± 0.250 (paired)" in text


@pytest.mark.slow
def test_toy_end_to_end(tmp_path):
  """Two formulations, 5 training steps, 1,000 samples in 2 chunks: the JSON holds paired
  chunks from the same x_T and the same floor for both."""
  out = tmp_path / "r.json"
  eds.main(["--part", "toy", "--workdir", str(tmp_path / "w"), "--formulations", "edm,rf",
            "--train_steps", "5", "--batch", "64", "--n", "1000", "--chunk", "500",
            "--nfes", "10", "--reference", "0", "--out", str(out)])
  result = json.loads(out.read_text())
  forms = result["formulations"]
  assert [f["formulation"] for f in forms] == ["edm", "rf"]
  assert forms[0]["floor_chunks"] == forms[1]["floor_chunks"]
  for f in forms:
    assert f["train_steps"] == 5 and f["batch_size"] == 64
    assert [(r["sampler"], r["target_nfe"]) for r in f["runs"]] == [
        ("edm_heun", 10), ("dpm_solver++-2M", 10)]
    assert all(len(r["sw_chunks"]) == 2 and r["finite"] for r in f["runs"])


def test_merge_orders_formulations_and_refuses_duplicates(tmp_path):
  def run(names, load):
    return dict(part="toy", date="d", load_average=load, device="cpu", nfes="10",
                formulations=[dict(formulation=n, floor=0.05, runs=[]) for n in names])
  merged = eds.merge([run(["rf"], [1, 1, 1]), run(["edm", "vp"], [2, 2, 2])])
  assert [f["formulation"] for f in merged["formulations"]] == ["edm", "vp", "rf"]
  assert [r["load_average"] for r in merged["runs"]] == [[1, 1, 1], [2, 2, 2]]
  with pytest.raises(UserError, match="more than once"):
    eds.merge([run(["rf"], [1]), run(["rf"], [1])])
  paths = []
  for i, names in enumerate((["vp"], ["edm"])):
    paths.append(tmp_path / f"{i}.json")
    paths[-1].write_text(json.dumps(run(names, [0, 0, 0])))
  out = tmp_path / "m.json"
  eds.main(["--part", "toy", "--workdir", str(tmp_path), "--out", str(out),
            "--merge", ",".join(map(str, paths))])
  assert [f["formulation"] for f in json.loads(out.read_text())["formulations"]] == ["edm", "vp"]
