import torch

from ssam_cli.threads import torch_threads


def test_threads_are_set_inside_and_restored_after_even_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    try:
        with torch_threads(target):
            assert torch.get_num_threads() == target
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
