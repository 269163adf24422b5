"""Reading user-supplied torch files: one line naming the file for each way it can fail."""
import pytest

torch = pytest.importorskip("torch")

from models.checkpoints import load_dict, save_atomic  # noqa: E402


class Refused(Exception):
    pass


class Thing:
    """A user class: pickled by reference, so weights_only refuses it."""


def test_each_unusable_file_gets_its_own_one_line_reason(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    objects = tmp_path / "objects.pt"
    torch.save({"w": Thing()}, objects)                     # not an allowed type
    cases = [(tmp_path / "none.pt", "cannot read weights .*none.pt: No such file"),
             (text, "notes.pt: not a torch file"),
             (objects, "objects.pt: it holds objects other than tensors"),
             (tensor, "tensor.pt holds a Tensor, not a dictionary")]
    for path, match in cases:
        with pytest.raises(Refused, match=match) as e:
            load_dict(path, Refused, "weights")
        assert "\n" not in str(e.value)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert torch.equal(load_dict(good, Refused)["w"], torch.ones(3))


def test_export_of_nan_weights_is_refused_naming_the_tensor(tmp_path):
    """They exported without complaint; compile refused them only later."""
    from models import build
    from models.errors import ModelError
    from models.onnx_export import export
    state = build("mlp", seed=0).state_dict()
    name = next(iter(state))
    state[name][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ModelError, match=f"weights .*nan.pt: {name} holds NaN or infinite"):
        export("mlp", tmp_path / "m.onnx", weights=tmp_path / "nan.pt")
    assert not (tmp_path / "m.onnx").exists()


def test_the_same_object_saves_to_the_same_bytes(tmp_path):
    """torch named the archive's root folder after the random temporary file."""
    state = {"w": torch.arange(6.0), "step": 3}
    save_atomic(state, tmp_path / "a.pt")
    save_atomic(state, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(load_dict(tmp_path / "a.pt", Refused)["w"], state["w"])


@pytest.mark.parametrize("keep", [10, 200, -20])
def test_a_truncated_file_is_said_to_be_damaged(tmp_path, keep):
    """It read "[Errno 22] Invalid argument" or miniz's paragraph of advice."""
    save_atomic({"w": torch.ones(1000)}, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[:keep])
    with pytest.raises(Refused, match=r"cannot read weights .*w.pt: damaged or truncated "
                                      r"\([^.]*\)$"):
        load_dict(tmp_path / "w.pt", Refused, "weights")
