"""Reading user-supplied torch files: one line naming the file for each way it can fail."""
import pytest

torch = pytest.importorskip("torch")

from models.checkpoints import load_dict  # noqa: E402


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
