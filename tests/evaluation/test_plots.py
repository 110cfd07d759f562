import pytest
import torch

from ardiff_scale.diffusion import decode_schedule, token_step_indices
from ardiff_scale.errors import ConfigError
from ardiff_scale.evaluation.plots import describe_order, plot_trajectory, shown_steps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sampler_trajectory(length: int, num_steps: int, decode_steps: int, form: str = "code") -> torch.Tensor:
    """The (M + 1, N) token steps the sampler visits: the same two calls `sample` makes."""
    visited = torch.tensor(decode_schedule(length, num_steps, decode_steps))
    return token_step_indices(visited, length, num_steps, form)


@pytest.mark.parametrize("length, decode_steps, form", [(50, 20, "code"), (128, 1000, "paper")])
def test_plot_trajectory_writes_a_png_matplotlib_reads_back(tmp_path, length, decode_steps, form):
    import matplotlib.image

    path = tmp_path / "nested" / "dir" / "fig1.png"
    trajectory = sampler_trajectory(length, 2000, decode_steps, form)
    pieces = ["$", "$x", "\ufffd", "<0xE2>", "_{", "^", *(f"w{n}" for n in range(length - 6))]  # not TeX
    plot_trajectory(str(path), trajectory, 2000, form, pieces=pieces, text=" ".join(pieces), source="costs $5")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= 800 and height >= 600
    assert not list(path.parent.glob(".tmp-*"))  # the atomic write left no temporary file


def test_plot_trajectory_without_tokens(tmp_path):
    path = tmp_path / "fig.PNG"
    plot_trajectory(str(path), sampler_trajectory(8, 100, 3).numpy(), 100, "code")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("name", ["fig1.pdf", "fig1", "fig1.png.txt"])
def test_plot_trajectory_refuses_a_path_that_is_not_png(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(ConfigError, match=r"\.png.*" + name.replace(".", r"\.")):
        plot_trajectory(str(path), sampler_trajectory(8, 100, 3), 100, "code")
    assert not path.exists()


def test_plot_trajectory_refuses_a_single_row(tmp_path):
    with pytest.raises(ValueError, match="M >= 1"):
        plot_trajectory(str(tmp_path / "f.png"), torch.zeros(1, 8, dtype=torch.int64), 100, "code")


def test_shown_steps_keeps_every_row_when_few_and_thins_with_both_ends_when_many():
    assert shown_steps(sampler_trajectory(50, 2000, 20)) == list(range(21))
    trajectory = sampler_trajectory(32, 2000, 1016)  # stride 2 with no remainder: visits 2031, ..., 3, 1, 0
    rows = shown_steps(trajectory, max_lines=25)
    assert 10 <= len(rows) <= 25 and rows[0] == 0 and rows[-1] == 1016 and rows == sorted(rows)
    clean = (trajectory[rows] == 0).sum(1)
    assert ((clean > 0) & (clean < 32)).sum() >= 3  # the last steps, where left tokens finish one by one


def test_describe_order_says_when_left_tokens_reach_zero_first():
    assert describe_order(sampler_trajectory(32, 2000, 1016)) == ("left tokens reach t = 0 first: the first at "
                                                                  "step 1000; at step 1015, positions 1-31 of 32 "
                                                                  "are clean")
    assert "all reach t = 0 in the last step" in describe_order(sampler_trajectory(50, 2000, 20))
    assert describe_order(torch.tensor([[9, 9, 9], [0, 0, 0]])) == "every position follows the same timesteps"
