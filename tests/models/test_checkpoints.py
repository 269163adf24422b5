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
