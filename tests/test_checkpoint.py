"""Checkpoints: round trips, atomic writes, and files that are not what they claim."""

import json
import os
import zipfile

import numpy as np
import pytest

from fastconv import checkpoint, nn, optim
from fastconv.checkpoint import CheckpointError
from fastconv.rng import default_generator, manual_seed


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8, 3, rng=rng))


def _trained(steps=3):
    model = _model()
    opt = optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    sched = optim.CosineAnnealingLR(opt, T_max=7)
    x = np.random.default_rng(1).standard_normal((4, 1, 4, 4)).astype(np.float32)
    for _ in range(steps):
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = _trained()
    loader_rng = np.random.default_rng(5)
    loader_rng.permutation(10)
    manual_seed(11).standard_normal(3)
    extra = {"history": [{"loss": 0.5}], "pair": (1, "a"), 3: np.arange(4)}
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model=model, optimizer=opt, scheduler=sched, epoch=2,
                    extra=extra, generators={"loader": loader_rng})
    expect_fc, expect_loader = default_generator().random(3), loader_rng.random(3)

    model2 = _model(seed=9)
    opt2 = optim.Adam(model2.parameters(), lr=0.5, amsgrad=True)
    sched2 = optim.CosineAnnealingLR(opt2, T_max=7)
    manual_seed(99)
    loader2 = np.random.default_rng(0)
    got = checkpoint.load(path, model=model2, optimizer=opt2, scheduler=sched2,
                          generators={"loader": loader2})
    assert got.epoch == 2
    assert got.extra["history"] == [{"loss": 0.5}] and got.extra["pair"] == (1, "a")
    np.testing.assert_array_equal(got.extra[3], np.arange(4))
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(),
                         strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd["param_groups"] == [{**g, "params": g["params"]} for g in sd2["param_groups"]]
    for i, st in sd["state"].items():
        assert st["step"] == sd2["state"][i]["step"] == 3
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_array_equal(st[k], sd2["state"][i][k])
    assert sched2.state_dict() == sched.state_dict()
    np.testing.assert_array_equal(default_generator().random(3), expect_fc)
    np.testing.assert_array_equal(loader2.random(3), expect_loader)


def test_files_hold_no_pickles(tmp_path):
    model, opt, sched = _trained(1)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model=model, optimizer=opt, scheduler=sched, epoch=1)
    with np.load(path, allow_pickle=False) as z:
        assert all(not z[k].dtype.hasobject for k in z.files)
        meta = json.loads(str(z["__meta__"]))
    assert meta["format"] == "fastconv.checkpoint" and meta["epoch"] == 1
    with pytest.raises(TypeError, match="entry 'a0' is an object array"):
        checkpoint.write_npz(tmp_path / "o.npz", {"a0": np.array([None, 1], dtype=object)})
    with pytest.raises(TypeError, match="cannot store a set"):
        checkpoint.save(tmp_path / "s.npz", extra={1, 2})


def test_a_crash_mid_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    model, opt, _ = _trained(1)
    checkpoint.save(path, model=model, optimizer=opt, epoch=1)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, model=model, optimizer=opt, epoch=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]                  # no temporary file left
    monkeypatch.undo()
    assert checkpoint.load(path, model=model, optimizer=opt).epoch == 1


class _Boom:
    """Unpickling this creates a file: the proof that a pickle ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_an_object_array_holding_a_pickle_is_refused_unrun(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array("{}"),
             a0=np.array([_Boom(str(target))], dtype=object))
    for loader in (checkpoint.load, nn.load):
        with pytest.raises(CheckpointError, match=r"evil.npz: entry 'a0' is an object array "
                                                  r"\(object, shape \(1,\)\).*refused"):
            loader(path)
    assert not target.exists()


def test_damaged_or_foreign_files_are_named(tmp_path):
    model, opt, sched = _trained(1)
    good = tmp_path / "good.npz"
    checkpoint.save(good, model=model, optimizer=opt, scheduler=sched, epoch=1)
    blob = good.read_bytes()

    cut = tmp_path / "cut.npz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"cut.npz: not an .npz archive \(not a zip "
                                              r"file; truncated"):
        checkpoint.load(cut, model=model)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    for loader in (checkpoint.load, nn.load):
        with pytest.raises(CheckpointError, match="text.npz: not an .npz archive"):
            loader(text)
    with pytest.raises(FileNotFoundError, match="nothere.npz: no such file"):
        checkpoint.load(tmp_path / "nothere.npz")

    weights = tmp_path / "weights.npz"
    nn.save(model.state_dict(), weights)                   # a state dict, no structure
    with pytest.raises(CheckpointError, match=r"weights.npz: no '__meta__' entry; not a "
                                              r"fastconv checkpoint"):
        checkpoint.load(weights, model=model)

    def rewrite(name, change):
        with np.load(good, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        change(arrays)
        p = tmp_path / name
        np.savez(p, **arrays)
        return p

    extra = rewrite("extra.npz", lambda a: a.update(zz=np.zeros(2)))
    with pytest.raises(CheckpointError, match=r"extra.npz: arrays \['zz'\] are not part"):
        checkpoint.load(extra)
    missing = rewrite("missing.npz", lambda a: a.pop("a0"))
    with pytest.raises(CheckpointError, match="missing.npz: the structure refers to array "
                                              "'a0', which the archive lacks"):
        checkpoint.load(missing)
    notjson = rewrite("notjson.npz", lambda a: a.update(__meta__=np.array("{oops")))
    with pytest.raises(CheckpointError, match="notjson.npz: '__meta__' is not valid JSON"):
        checkpoint.load(notjson)
    numeric = rewrite("numeric.npz", lambda a: a.update(__meta__=np.zeros(3)))
    with pytest.raises(CheckpointError, match="numeric.npz: '__meta__' is a float64 array"):
        checkpoint.load(numeric)
    other = rewrite("other.npz", lambda a: a.update(__meta__=np.array('{"format": "x"}')))
    with pytest.raises(CheckpointError, match="other.npz: the structure does not say "
                                              "format='fastconv.checkpoint'"):
        checkpoint.load(other)

    with pytest.raises(CheckpointError, match=r"good.npz: the model state does not fit: "
                                              r".*4.weight has shape \(3, 8\) in the state "
                                              r"dict but \(5, 8\) in the model"):
        checkpoint.load(good, model=nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2),
                                                  nn.ReLU(), nn.Flatten(), nn.Linear(8, 5)))
    with pytest.raises(CheckpointError, match=r"good.npz: the optimizer state does not fit: "
                                              r"Adam.load_state_dict: parameter group 0 has "
                                              r"6 parameters in the state dict, 1"):
        checkpoint.load(good, optimizer=optim.Adam([nn.Parameter(np.zeros(2))]))
    bare = tmp_path / "bare.npz"
    checkpoint.save(bare, epoch=0)
    with pytest.raises(CheckpointError, match="bare.npz: the checkpoint holds no scheduler"):
        checkpoint.load(bare, scheduler=sched)
    with pytest.raises(CheckpointError, match=r"bare.npz: no random state saved for "
                                              r"'loader' \(saved: \['fastconv'\]\)"):
        checkpoint.load(bare, generators={"loader": np.random.default_rng()})
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as zf:
        zf.writestr("readme.txt", "not an array")
    with pytest.raises(CheckpointError, match="odd.npz: entry 'readme.txt' is not a .npy"):
        checkpoint.load(tmp_path / "odd.npz")


def test_nn_save_is_atomic_and_round_trips(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "w.npz"
    nn.save(model.state_dict(), path)
    back = nn.load(path)
    assert list(back) == list(model.state_dict())
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError, match="crash"):
        nn.save({"x": np.zeros(2)}, path)
    assert list(nn.load(path)) == list(model.state_dict())
    assert os.listdir(tmp_path) == ["w.npz"]
