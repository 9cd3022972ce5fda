"""engine.flags: the optimiser flags refuse nan, inf and absurd values, naming the flag and its value (a nan weight
decay used to train until the loss was nan, and its stop line blamed the learning rate)."""
import pytest

import train_CMC
import train_moco_ins
from engine.errors import UserError

BASE = ['--dataset', 'demo', '--model_path', 'm', '--tb_path', 't']


@pytest.mark.parametrize('flag, value, bounds', [
    ('--weight_decay', 'nan', '[0, 1]'), ('--weight_decay', '1e30', '[0, 1]'), ('--weight_decay', '-1', '[0, 1]'),
    ('--momentum', 'nan', '[0, 1)'), ('--momentum', '1', '[0, 1)'), ('--lr_decay_rate', 'inf', '(0, 1]'),
    ('--lr_decay_rate', '0', '(0, 1]')])
@pytest.mark.parametrize('script', [train_CMC, train_moco_ins])
def test_optimiser_flags_out_of_range_name_the_flag_and_its_value(script, flag, value, bounds):
    with pytest.raises(UserError) as error:
        script.parse_option([*BASE, flag, value])
    assert str(error.value) == f'{flag} must be in {bounds}, got {float(value)}'


def test_optimiser_flags_in_range_pass():
    opt = train_CMC.parse_option([*BASE, '--weight_decay', '0', '--momentum', '0', '--lr_decay_rate', '1'])
    assert (opt.weight_decay, opt.momentum, opt.lr_decay_rate) == (0.0, 0.0, 1.0)
