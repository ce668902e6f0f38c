"""The training benchmark: torch's networks match fastconv's, and a tiny run reports."""

import numpy as np
import pytest

from fastconv.tools.bench import train, train_models


@pytest.mark.parametrize("name", sorted(train_models.SPECS))
def test_torch_networks_take_fastconv_weights_and_agree(name):
    torch = pytest.importorskip("torch")
    spec = train_models.SPECS[name]
    x = np.random.default_rng(0).random((2, *spec.input_shape), dtype=np.float32)
    for layout in ("NCHW", "NHWC"):
        ours = spec.build(np.random.default_rng(1), layout)
        theirs = train_models.torch_model(torch, spec)
        train_models.load_into_torch(torch, theirs, ours)
        tx = torch.from_numpy(x)
        ox = x
        if layout == "NHWC":
            theirs = theirs.to(memory_format=torch.channels_last)
            tx = tx.contiguous(memory_format=torch.channels_last)
            ox = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        np.testing.assert_allclose(ours(ox).data, theirs(tx).detach().numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=f"{name} {layout}")


def test_tiny_run_prints_the_table(capsys):
    assert train.throughput(models=("lenet",), layouts=("NHWC",), batch=2, steps=1,
                            rounds=1, settle=0.0) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("LeNet-5")][-1]
    assert row.split()[1:4] == ["NHWC", "2", "glibc"]
    assert float(row.split()[5]) > 0              # fastconv images/s


def test_the_ratio_comes_with_its_spread_round_by_round(capsys):
    """Beside torch, each row gives the quartiles of the ratio of the frameworks'
    adjacent blocks, round by round, around the ratio of the medians."""
    pytest.importorskip("torch")
    assert train.throughput(models=("lenet",), layouts=("NCHW",), batch=2, steps=2,
                            rounds=4, settle=0.0) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("LeNet-5")][-1].split()
    q1, q3 = map(float, row[8].split("-"))
    assert 0 < q1 <= q3 and float(row[7]) > 0
    assert "images/s ratio round by round" in out


def test_paired_ratios_take_each_round_alone():
    # torch twice as slow in round 0, three times in round 1, whatever the drift between
    np.testing.assert_allclose(train.paired_ratios([2, 2, 30, 30], [1, 1, 10, 10], 2),
                               [2.0, 3.0])


def test_unknown_model():
    with pytest.raises(ValueError, match="train throughput: unknown model 'vgg'"):
        train.throughput(models=("vgg",))
    with pytest.raises(ValueError, match="train throughput: clock='gpu' must be one of wall, cpu"):
        train.throughput(clock="gpu")


def test_the_eval_forward_runs_in_eval_mode_and_training_steps_in_training_mode():
    """The eval forward is an inference forward: batch norm on its running averages,
    which it does not move; the next training step runs in training mode again."""
    spec = train_models.SPECS["resnet-small"]
    rng = np.random.default_rng(0)
    xs = rng.random((train.N_BATCHES, 2, *spec.input_shape), dtype=np.float32)
    ys = rng.integers(0, 10, (train.N_BATCHES, 2))
    runners, model, _, _ = train._runners(spec, "NCHW", xs, ys, 1, None)
    step, evaluate = runners["fastconv"]
    norms = [m for m in model.modules() if hasattr(m, "running_mean")]
    assert norms
    before = [m.running_mean.copy() for m in norms]
    evaluate(0)
    evaluate(1)
    for m, was in zip(norms, before, strict=True):
        np.testing.assert_array_equal(m.running_mean, was)
    assert not any(m.training for m in model.modules())
    step(0)                        # a training step moves them again
    assert all(m.training for m in model.modules())
    assert any(not np.array_equal(m.running_mean, was)
               for m, was in zip(norms, before, strict=True))
