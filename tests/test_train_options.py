"""``training.run`` / ``fastconv train`` with layout= (channels last) and device=: the
NHWC run matches the NCHW one, metrics and checkpoints carry the layout, and a
device="cuda" run that cannot work is refused up front with one line (the GPU runs
themselves: tests/cuda/test_train_cuda.py)."""

import json

import numpy as np
import pytest

from fastconv import training
from fastconv.cuda import _device
from fastconv.tools import cli

KW = dict(model="lenet", dataset="synthetic", epochs=1, batch_size=50, seed=2, limit=200,
          progress=False, log=lambda *a: None)


def test_nhwc_run_matches_nchw_and_records_the_layout(tmp_path):
    a = training.run(**KW, out=str(tmp_path / "a"))
    b = training.run(**KW, layout="NHWC", out=str(tmp_path / "b"))
    assert len(a["epochs"][0]["batch_losses"]) == 4                 # limit: 200 images
    np.testing.assert_allclose(b["epochs"][0]["batch_losses"], a["epochs"][0]["batch_losses"],
                               rtol=1e-5)
    for key in ("test_loss", "test_accuracy"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    for k, v in a["model"].state_dict().items():                    # torch's shapes in both
        np.testing.assert_allclose(b["model"].state_dict()[k], v, rtol=1e-4, atol=1e-6)
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["config"]["layout"] == "NHWC" and saved["device"] == "cpu"


def test_a_resume_with_another_layout_is_refused(tmp_path, capsys):
    args = ["train", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "800",
            "--no-progress", "--checkpoint-every", "1", "--out", str(tmp_path)]
    assert cli.main(args + ["--epochs", "1"]) == 0
    ck = str(tmp_path / "checkpoint.npz")
    assert cli.main(args + ["--epochs", "1", "--layout", "NHWC", "--resume", ck]) == 1
    assert capsys.readouterr().err == (f"fastconv train: {ck} was written by a run with "
                                       "layout='NCHW', this run has layout='NHWC'\n")


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "adam"], "optimizer='adam' has no GPU path yet (Adam.step runs on the "
                              "CPU only); use --optimizer sgd or --device cpu"),
    (["--model", "resnet"], "model='resnet' has no GPU path yet (its fused batch norm + "
                            "ReLU and residual add run on the CPU only); use --model lenet "
                            "or --device cpu"),
])
def test_cuda_without_a_gpu_path_is_refused_up_front(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(training, "run", lambda **kw: pytest.fail("training started"))
    assert cli.main(["train", "--device", "cuda", *argv]) == 2
    assert capsys.readouterr().err == f"fastconv train: {message}\n"
    with pytest.raises(ValueError, match=r"^train: " + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        training.check_device("resnet" if "resnet" in argv else "lenet",
                              argv[1] if "adam" in argv else "sgd", "cuda")


def test_cuda_without_a_usable_gpu_says_why(capsys, monkeypatch):
    if _device.unavailable_reason() is None:
        pytest.skip("a GPU (or the simulator) is usable in this process")
    monkeypatch.setattr(training, "run", lambda **kw: pytest.fail("training started"))
    assert cli.main(["train", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fastconv train: device='cuda' is "
                                               "unavailable: ")
    monkeypatch.undo()
    with pytest.raises(_device.CudaUnavailableError, match=r"^train: device='cuda' is "):
        training.run(**KW, device="cuda")


def test_bad_layout_limit_and_device():
    with pytest.raises(ValueError, match=r"train: layout='NCWH' is not known; acceptable "
                                         r"values are 'NCHW', 'NHWC'"):
        training.run(**{**KW, "layout": "NCWH"})
    with pytest.raises(ValueError, match=r"train: limit=0 must be a positive int or None"):
        training.run(**{**KW, "limit": 0})
    with pytest.raises(ValueError, match=r"train: device='tpu' is not known; acceptable "
                                         r"values are 'cpu', 'cuda'"):
        training.run(**KW, device="tpu")
