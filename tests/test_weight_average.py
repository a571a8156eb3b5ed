"""The exponential moving average of the weights that ``train --weight-average`` validates and saves."""

import pytest
import torch
from torch import nn

from wsi_frgnet.train.weight_average import WeightAverage


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_average_follows_the_weights_with_a_warming_decay():
    model = _network()
    average = WeightAverage(model, decay=0.99)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model)  # first update: decay min(0.99, 1 / 10) = 0.1
    torch.testing.assert_close(average.module[0].weight, start + 0.9)
    for _ in range(500):
        average.update(model)
    torch.testing.assert_close(average.module[0].weight, model[0].weight, atol=1e-2, rtol=0)
    # Integer buffers are copied, floating ones averaged; the trained model is left alone.
    model[1].num_batches_tracked.fill_(7)
    average.update(model)
    assert int(average.module[1].num_batches_tracked) == 7
    assert not any(p.requires_grad for p in average.module.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_average_state_round_trips():
    model = _network()
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[0].bias.add_(2.0)
    average.update(model)
    again = WeightAverage(_network(), decay=0.9)
    again.load_state_dict(average.state_dict())
    assert again.updates == 1
    torch.testing.assert_close(again.module[0].bias, average.module[0].bias)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(_network(), decay)
