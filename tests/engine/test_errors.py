"""engine.errors.run_main: a run ends with one line and an exit status, said once under torchrun (the first process to
end says it; before the process group exists, rank 0), and a Ctrl-C outside the epochs is a line, not a traceback."""
import pytest

from engine import errors, flags


def ended(main, capsys):
    """(exit status, stderr) of run_main(main)."""
    with pytest.raises(SystemExit) as exit_:
        errors.run_main(main)
    return exit_.value.code, capsys.readouterr().err


def test_ctrl_c_outside_the_epochs_is_one_line(capsys):
    def main(argv):
        raise KeyboardInterrupt
    assert ended(main, capsys) == (130, 'stopped by Ctrl-C (SIGINT); nothing was saved since the last checkpoint\n')


@pytest.mark.parametrize('rank, said', [('0', True), ('1', False)])
def test_before_the_process_group_only_rank_0_says_it(monkeypatch, capsys, rank, said):
    """Every process of a torchrun job parses the same flags and fails alike (argparse's own errors included)."""
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', rank)

    def main(argv):
        raise errors.UserError('--nce_t must be a positive number, got 0.0')
    assert ended(main, capsys) == (2, 'error: --nce_t must be a positive number, got 0.0\n' if said else '')
    parser = flags.ArgumentParser('test')
    parser.add_argument('--epochs', type=int)
    with pytest.raises(SystemExit):
        parser.parse_args(['--bogus'])
    assert capsys.readouterr().err == ('error: unrecognized arguments: --bogus (see --help)\n' if said else '')
