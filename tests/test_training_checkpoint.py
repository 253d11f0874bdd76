"""Checkpoint files in one process: an async save appears only when finished and holds the weights of the
step it was taken at; pickled objects other than DCP's metadata are refused; export to one safetensors."""
import json
import pickle
import pickletools

import pytest
import torch
from safetensors.torch import load_file

from training import checkpoint as ckpt_lib
from training.model import FusionModel, ModelConfig


def trained_model(seed=0):
    torch.manual_seed(seed)
    model = FusionModel(ModelConfig.preset("tiny", vocab_size=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(3, 64, (2, 8))
    model({"image": torch.randn(2, 3, 32, 32), "input_ids": ids,
           "loss_mask": torch.ones_like(ids, dtype=torch.bool)})["loss"].backward()
    opt.step()
    return model, opt


def save_args():
    return dict(train_state={"skipped_steps": 0}, data_state={"num_streams": 1, "num_shards": 1, "streams": {"0": {"epoch": 0}}},
                config={"stage": "fusion"})


def test_async_save_is_invisible_until_finished_and_keeps_the_saved_step(tmp_path):
    model, opt = trained_model()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    ck = ckpt_lib.Checkpointer(tmp_path, keep_last=1, async_save=True)
    final = ck.save(1, model=model, optimizer=opt, **save_args())
    assert not final.exists() and ckpt_lib.list_checkpoints(tmp_path) == []
    with torch.no_grad():                                  # training goes on while the write is in flight
        for p in model.parameters():
            p.add_(1.0)
    ck.wait()
    assert ckpt_lib.list_checkpoints(tmp_path) == [final] and not list(final.parent.glob(".tmp*"))
    got = ckpt_lib.load_weights(final)
    assert got.keys() == saved.keys() and all(torch.equal(got[k], saved[k]) for k in saved)
    # keep_last = 1: the next save replaces it
    ck.save(2, model=model, optimizer=opt, **save_args())
    ck.wait()
    assert [p.name for p in ckpt_lib.list_checkpoints(tmp_path)] == ["step_00000002"]
    assert json.loads((tmp_path / "checkpoints/step_00000002/train_state.json").read_text())["step"] == 2


def test_load_restores_weights_and_moments_and_export_writes_one_file(tmp_path):
    model, opt = trained_model()
    final = ckpt_lib.save(tmp_path, 3, model=model, optimizer=opt, **save_args())
    other, other_opt = trained_model(seed=1)
    state, data = ckpt_lib.load(final, model=other, optimizer=other_opt)
    assert state["step"] == 3 and data == save_args()["data_state"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], other_opt.state[q]["exp_avg_sq"])
    assert other_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    out = ckpt_lib.export_safetensors(final, tmp_path / "model.safetensors")
    flat = load_file(str(out))
    assert all(torch.equal(flat[k], v) for k, v in model.state_dict().items())


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_metadata_naming_a_foreign_callable_is_refused(tmp_path):
    model, opt = trained_model()
    final = ckpt_lib.save(tmp_path, 1, model=model, optimizer=opt, **save_args())
    meta = final / "state" / ".metadata"
    assert any(op.name in ("GLOBAL", "STACK_GLOBAL") for op, _, _ in pickletools.genops(meta.read_bytes()))
    meta.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        ckpt_lib.load_weights(final)
