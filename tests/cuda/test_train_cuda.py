"""``training.run(device="cuda")`` under the simulator: LeNet-5 on two digits, one
epoch of two batches, trains as on the CPU (the loss of every batch, the test loss and
accuracy, the weights); NHWC too (slow: the simulator takes ~25 s a run). A model on the
GPU writes and loads its state dict through host copies (checkpoints, weights.npz)."""

import numpy as np
import pytest

from fastconv import training

KW = dict(model="lenet", dataset="digits", epochs=1, batch_size=1, seed=1, limit=2,
          progress=False, log=lambda *a: None)


@pytest.mark.parametrize("layout", ["NCHW", pytest.param("NHWC", marks=pytest.mark.slow)])
def test_run_on_the_gpu_matches_the_cpu(layout, tmp_path):
    cpu = training.run(**KW, layout=layout)
    gpu = training.run(**KW, layout=layout, device="cuda", out=str(tmp_path))
    assert gpu["device"] == "cuda" and len(gpu["epochs"][0]["batch_losses"]) == 2
    np.testing.assert_allclose(gpu["epochs"][0]["batch_losses"],
                               cpu["epochs"][0]["batch_losses"], rtol=1e-5)
    assert gpu["test_loss"] == pytest.approx(cpu["test_loss"], rel=1e-5)
    assert gpu["test_accuracy"] == cpu["test_accuracy"]
    assert all(p.device == "cuda" for p in gpu["model"].parameters())
    for k, v in cpu["model"].state_dict().items():          # weights.npz: host copies
        np.testing.assert_allclose(gpu["model"].state_dict()[k], v, rtol=1e-4, atol=1e-6,
                                   err_msg=k)


def test_state_dict_of_a_model_on_the_gpu_goes_through_the_host():
    a = training.build_model("lenet", 1, 10, 8, np.random.default_rng(0)).to("cuda")
    b = training.build_model("lenet", 1, 10, 8, np.random.default_rng(1)).to("cuda")
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b.load_state_dict(state)
    assert all(p.device == "cuda" for p in b.parameters())
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_a_nonfinite_loss_on_the_gpu_is_located_on_the_host():
    from fastconv import nn
    from fastconv.autograd import Tensor

    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    net[2].weight.data[:] = np.inf
    net.to("cuda")
    x = Tensor(np.ones((1, 2), np.float32)).to("cuda")
    assert training.locate_nonfinite(net, x) == ("layer '2' (Linear); non-finite "
                                                 "parameters: 2.weight")
    assert all(p.device == "cuda" for p in net.parameters())
