"""What a seed varies (`vary`): initial weights, batch order and, with "data", the train/validation split."""
import pytest
import torch
from mlflow import MlflowClient

from optimstudy import RunConfig, results
from optimstudy.facts import DEFAULT_VARY
from optimstudy.problems.registry import resolve_problem
from optimstudy.run.training import load_data, set_up
from optimstudy.sweep.planning import plan, spec_identity
from optimstudy.sweep.spec import config_key
from optimstudy.sweep.spec_reader import parse_spec
from optimstudy.tracking.reader import load_runs


def data_of_seeds(problem: str, vary: str, data_dir=None, split_seed=0):
    return [load_data(RunConfig(problem=problem, seed=seed, vary=vary, split_seed=split_seed).resolved(),
                      data_dir=data_dir) for seed in (0, 1)]


def rows(split) -> set:
    return {row.numpy().tobytes() for row in split.x.flatten(1)}


@pytest.mark.parametrize("problem", ["linreg", "mnist_mlp"])  # generated data, and a torchvision set
def test_with_data_each_seed_draws_its_own_validation_split_and_the_test_split_stays(problem, request):
    data_dir = request.getfixturevalue("mnist_dir") if problem == "mnist_mlp" else None
    first, second = data_of_seeds(problem, "init,order,data", data_dir)
    assert len(first.val) == len(second.val) > 0 and rows(first.val) != rows(second.val)
    assert rows(first.train) | rows(first.val) == rows(second.train) | rows(second.val)  # one pool, split anew
    assert not rows(first.train) & rows(first.val)
    assert torch.equal(first.test.x, second.test.x) and torch.equal(first.test.y, second.test.y)
    assert first.digest != second.digest  # the data set logged with each run says which split it trained on

    plain = data_of_seeds(problem, DEFAULT_VARY, data_dir)  # today's behaviour: split_seed alone fixes the split
    assert torch.equal(plain[0].val.x, plain[1].val.x) and plain[0].digest == plain[1].digest
    assert torch.equal(plain[0].test.x, first.test.x)
    # the draw is of the pair: (split_seed 1, seed 0) is not (split_seed 0, seed 1)
    swapped = data_of_seeds(problem, "init,order,data", data_dir, split_seed=1)[0]
    assert rows(swapped.val) != rows(second.val)


@pytest.mark.parametrize("vary, same_weights, same_batches", [
    ("init,order", False, False), ("order", True, False), ("init", False, True),
    ("data", True, False)])  # data: one fixed order, but over each seed's own training rows
def test_a_part_the_seed_does_not_vary_is_the_same_for_every_seed(vary, same_weights, same_batches):
    def start(seed):
        config = RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=5, seed=seed, vary=vary).resolved()
        setup = set_up(config, resolve_problem("linreg"), load_data(config))
        return torch.cat([p.detach().flatten() for p in setup.params]), next(setup.batches)[0]

    (weights_0, batch_0), (weights_1, batch_1) = start(0), start(1)
    assert torch.equal(weights_0, weights_1) == same_weights
    assert torch.equal(batch_0, batch_1) == same_batches


def test_vary_is_one_readable_text_and_part_of_the_key_only_when_not_the_default():
    assert RunConfig(problem="linreg", vary=["data", "init"]).params()["vary"] == "init,data"
    assert RunConfig(problem="linreg", vary="order, data").vary == "order,data"
    assert RunConfig(problem="linreg").params()["vary"] == DEFAULT_VARY == "init,order"
    plain, with_data = RunConfig(problem="linreg"), RunConfig(problem="linreg", vary="init,order,data")
    assert '"vary"' not in config_key(plain) and '"vary": "init,order,data"' in config_key(with_data)


def spec_text(extra: str) -> str:
    return f'name = "vary"\nproblem = "linreg"\nsteps = 5\nseeds = [0, 1]\n{extra}\n[optimizers.sgd]\nlr = [0.1]\n'


def test_a_spec_chooses_what_a_seed_varies_and_split_seed_may_be_a_grid_axis():
    import tomllib

    spec = parse_spec(tomllib.loads(spec_text('vary = ["data", "init", "order"]\nsplit_seed = [0, 5]\n'
                                              '[[runs]]\noptimizer = "sgd"\nlr = 0.3\n')))
    planned, _ = plan(spec)
    grid = [p.config for p in planned if p.phase == "grid"]
    assert {p.config.vary for p in planned} == {"init,order,data"}  # [[runs]] take it too
    assert sorted((c.split_seed, c.seed) for c in grid) == [(0, 0), (0, 1), (5, 0), (5, 1)]  # one setting per value
    assert sorted(p.config.split_seed for p in planned if p.phase == "run") == [0, 0, 5, 5]
    assert len({p.key for p in planned}) == len(planned) == 8
    # one split_seed is recorded as the number it was before it could be a list: old studies resume
    assert spec_identity(parse_spec(tomllib.loads(spec_text("split_seed = 3"))))["settings"] == {"split_seed": 3}


@pytest.mark.parametrize("line, given", [('vary = ["init", "weights"]', "weights"), ('vary = "data"', "'data'"),
                                         ("vary = []", "[]"), ('vary = ["data", "data"]', "'data', 'data'")])
def test_a_bad_vary_in_a_spec_exits_2_naming_the_valid_values(tmp_path, monkeypatch, capsys, line, given):
    from optimstudy.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(spec_text(line))
    assert main(["sweep", "bad.toml", "--dry-run"]) == 2
    message = capsys.readouterr().err
    assert "bad.toml" in message and "key 'vary' (line 5)" in message and given in message, message
    assert "init, order, data" in message and "Traceback" not in message
    assert not (tmp_path / "mlruns").exists()
    assert main(["run", "--problem", "linreg", "--steps", "5", "--vary", "init,weights"]) == 2
    message = capsys.readouterr().err
    assert "init,weights" in message and "init, order, data" in message and "Traceback" not in message, message
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_vary_is_logged_with_each_run_and_runs_from_before_it_read_as_init_order(cli, tmp_path):
    cli("run", "--problem", "linreg", "--steps", "5", "--vary", "data,init", "--experiment", "vary", cwd=tmp_path,
        check_exit=0)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("vary").experiment_id
    old = client.create_run(experiment_id).info.run_id  # a run logged before `vary` existed: no such param
    for key, value in {"problem": "linreg", "optimizer": "sgd", "lr": 0.1, "seed": 0, "steps": 5}.items():
        client.log_param(old, key, value)
    client.log_metric(old, "final_val_loss", 0.5)
    client.set_terminated(old)

    runs = results.run_table(load_runs(uri, experiments=["vary"]))
    assert sorted(runs["vary"]) == ["init,data", "init,order"]
    new = runs[runs["run_id"] != old].iloc[0]
    assert new["seed"] == 0 and "vary=init,data" in new["setting_key"]  # varying other things: another setting
