"""Fitting: determinism, non-finite steps, early stopping per member, the members, the loss and
the deadband, and the state carried across truncated-BPTT windows; on tiny seeded models."""
import math

import numpy as np
import pytest
import torch

from conftest import sensor_frame
from train.data import prepare_series
from train.fit import TrainConfig, TrainingError, fit
from train.model import RecurrentConfig, RecurrentModel
from train.prepare import prepare


def _tiny(df=None, members=1, **tc):
    data = prepare(prepare_series(sensor_frame(800) if df is None else df, "temp"), horizon=3)
    torch.manual_seed(0)
    model = RecurrentModel(RecurrentConfig(input_size=3, hidden_size=8, horizon=3, residual_input=2, members=members))
    return model, data, TrainConfig(**{"epochs": 3, "chunk": 128, "window": 16, "min_epoch_steps": 1, **tc})


def test_training_is_deterministic_and_monitored():
    runs = []
    for _ in range(2):
        model, data, tc = _tiny()
        res = fit(model, data, tc, progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    h = res.history[-1]
    assert all(math.isfinite(h[k]) for k in ("train_loss", "val_loss", "grad_norm", "weight_norm"))


def test_non_finite_losses_are_skipped_then_abort():
    model, data, tc = _tiny(max_bad_steps=4)
    data.x[:] = np.nan
    with pytest.raises(TrainingError, match="4 non-finite losses or gradients in a row"):
        fit(model, data, tc, progress=False)


def test_early_stopping_restores_the_best_weights(monkeypatch):
    """Validation losses scripted to be best at epoch 2: training stops after `patience` more
    epochs and the weights are exactly those of epoch 2."""
    import train.fit as tf
    model, data, tc = _tiny(epochs=10, patience=2)
    script, seen = iter([0.5, 0.1, 0.3, 0.4, 0.6, 0.7]), []

    def scripted(m, d, split, loss, base=None, by_series=None):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        v = next(script)
        return v, np.array([v])
    monkeypatch.setattr(tf, "stream_loss", scripted)
    res = fit(model, data, tc, progress=False)
    assert res.best_epoch == 2 and len(res.history) == 4
    assert all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, seen[3][k]) for k, v in model.state_dict().items())


def test_members_are_independent_nets_that_export_as_one():
    """members=2: no weight connects the two nets during or after training, each fits its own
    pieces, and the exported step (block-diagonal weights, the averaged head) is their mean."""
    from export.step import GRUStep
    from train.model import block_mask
    model, data, tc = _tiny(members=2, epochs=2)
    fit(model, data, tc, progress=False)
    cross = 1 - block_mask(8, 8, 2).repeat(3, 1)                           # [3H, H]: between the members
    assert float((model.rnn.weight_hh_l0 * cross).abs().max()) == 0.0
    assert float((model.head.weight * (1 - block_mask(6, 8, 2))).abs().max()) == 0.0
    x = torch.from_numpy(data.x[None, :50])
    y_members, _ = model.eval()(x, members=True)                           # [1, T, M, O]
    assert not torch.allclose(y_members[0, :, 0], y_members[0, :, 1])      # two different nets
    step, h, ys = GRUStep(model), torch.zeros(1, 1, 8), []
    for t in range(50):
        y, h = step(x[:, t], h)
        ys.append(y + x[:, t, 2:3])                                        # the residual, added by the runtime
    torch.testing.assert_close(torch.stack(ys, 1), y_members.mean(2), atol=1e-5, rtol=0)


def test_each_member_keeps_its_own_best_epoch(monkeypatch):
    """Member 0 is best at epoch 1, member 1 at epoch 3: each ends with the weights of its own best epoch."""
    import train.fit as tf
    model, data, tc = _tiny(members=2, epochs=6, patience=2)
    script, seen = iter([[0.1, 0.5], [0.2, 0.4], [0.3, 0.2], [0.4, 0.3], [0.5, 0.4], [0.6, 0.5], [0.0, 0.0]]), []

    def scripted(m, d, split, loss, base=None, by_series=None):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        each = np.asarray(next(script))
        return float(each.mean()), each
    monkeypatch.setattr(tf, "stream_loss", scripted)
    res = fit(model, data, tc, progress=False)
    assert res.best_epoch == 3 and len(res.history) == 5          # member 1 last improved at 3, patience 2
    w, rows = model.rnn.weight_hh_l0, torch.arange(24) % 8 // 4          # the member owning each row
    assert torch.equal(w[rows == 0], seen[0]["rnn.weight_hh_l0"][rows == 0])
    assert torch.equal(w[rows == 1], seen[2]["rnn.weight_hh_l0"][rows == 1])
    assert torch.equal(model.head.bias[:3], seen[0]["head.bias"][:3]) and torch.equal(model.head.bias[3:], seen[2]["head.bias"][3:])


def test_the_loss_is_mae_with_each_step_weighted_by_its_spread():
    from train.fit import StepLoss
    _, data, _ = _tiny()
    level = data.out_scaler.normalize(data.series.target[:, None], np.float64)
    rows = np.concatenate([np.arange(a, b) for a, b in data.splits["train"]])
    spread = np.mean(np.abs(data.y[rows] - level[rows]), axis=0)
    loss = StepLoss(data)
    np.testing.assert_allclose(loss.weights.numpy(), (1 / spread) / np.mean(1 / spread), rtol=1e-5)
    assert loss.weights[0] > loss.weights[-1]                  # the near step changes least: it weighs most
    e = torch.tensor([[0.5, -1.0, 2.0]])
    assert torch.allclose(loss(e, torch.zeros(1, 3)), e.abs() * loss.weights)
    assert torch.equal(StepLoss(data, "mse", balance=False)(e, torch.zeros(1, 3)), e ** 2)
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        StepLoss(data, "huber")


def test_the_deadband_is_fitted_where_no_change_is_common_and_off_where_not():
    """tau > 0 for a sensor that mostly reads the same value; about 0 for a smooth one (it zeroes
    under 5% of the forecasts); applied, it never raises the MAE it was fitted on."""
    from train import deadband
    rng = np.random.default_rng(0)
    smooth = rng.standard_normal((4000, 3))
    guess = smooth + 0.3 * rng.standard_normal(smooth.shape)
    assert np.mean(deadband.apply(guess, deadband.fit(guess, smooth)) == 0) < 0.05
    steps = np.where(rng.random((4000, 3)) < 0.6, 0.0, rng.standard_normal((4000, 3)))
    model = 0.5 * steps + 0.1 * rng.standard_normal(steps.shape)
    tau = deadband.fit(model, steps)
    assert min(tau) > 0
    after = np.mean(np.abs(deadband.apply(model, tau) - steps), axis=0)
    assert np.all(after < np.mean(np.abs(model - steps), axis=0))
    assert np.array_equal(deadband.apply(model, ()), model)


def test_the_deadband_holds_a_step_whose_forecast_changes_never_pay():
    """A step where the model's changes are noise against a sensor that almost never moves: every
    quantile threshold up to 0.9 still passes its largest changes; HOLD forecasts no change there
    (persistence's MAE), and a step where the model does help keeps a real threshold."""
    from train import deadband
    rng = np.random.default_rng(1)
    truth = np.where(rng.random((4000, 2)) < 0.97, 0.0, rng.standard_normal((4000, 2)))
    model = np.stack([rng.standard_normal(4000),                                   # step 1: noise
                      truth[:, 1] + 0.05 * rng.standard_normal(4000)], axis=1)     # step 2: skill
    tau = deadband.fit(model, truth)
    assert tau[0] == deadband.HOLD and tau[1] < 1
    held = deadband.apply(model, tau)
    assert np.all(held[:, 0] == 0)
    assert np.mean(np.abs(held[:, 0] - truth[:, 0])) == pytest.approx(np.mean(np.abs(truth[:, 0])))
    assert np.float32(deadband.HOLD) < np.finfo(np.float32).max        # the device's float32 and C take it
    from types import SimpleNamespace
    from train.pipeline import held_lines
    cfg = SimpleNamespace(deadband=tau, series_deadband=(("room9", (deadband.HOLD,) * 2), ("room1", (0.0, 0.1))))
    assert held_lines(cfg) == ["the deadband holds step(s) +1 at no change: the model's changes there never paid on "
                               "validation", "1 series' own deadbands hold steps at no change: room9 +1 +2"]
    assert held_lines(SimpleNamespace(deadband=(0.0, 0.1), series_deadband=())) == []


def test_state_is_carried_between_training_windows():
    """Truncated BPTT: each window of a piece starts from the (detached) state the last one ended in."""
    model, data, tc = _tiny(epochs=1, chunk=64, window=16, batch=1)
    calls = []
    real = model.forward

    def recording(x, state=None, **kw):
        out, new = real(x, state, **kw)
        calls.append((state, new.detach().clone()))
        return out, new
    model.forward = recording
    fit(model, data, tc, progress=False)
    train_calls = [c for c in calls if c[1].shape[1] == 1][:4]      # the first piece's windows
    assert train_calls[0][0] is None
    for (_, prev_out), (state_in, _) in zip(train_calls, train_calls[1:]):
        assert state_in is not None and not state_in.requires_grad and torch.equal(state_in, prev_out)


def test_the_schedule_counts_optimizer_steps_on_small_data():
    """An epoch of the schedule is >= REFERENCE_STEPS optimizer steps: a pass of 7 steps counts the
    cap and both patiences in 15x as many passes; a pass of 112 leaves them as given."""
    from train.fit import AUTO_EPOCHS, schedule
    tc = TrainConfig()
    assert tc.min_epoch_steps == 100 and schedule(tc, 112) == (AUTO_EPOCHS, tc.plateau_patience, tc.patience)
    assert schedule(tc, 7) == (AUTO_EPOCHS * 15, tc.plateau_patience * 15, tc.patience * 15)
    assert schedule(TrainConfig(epochs=2), 7)[0] == 2                  # an explicit cap is kept
    model, data, tc = _tiny(epochs=40, patience=1, plateau_patience=1, min_epoch_steps=100)  # 800 rows: a few steps a pass
    res = fit(model, data, tc, progress=False)
    assert len(res.history) > 10 and res.stopped in ("early stopping", "max epochs")   # patience 1 scaled up
