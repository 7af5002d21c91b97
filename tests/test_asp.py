"""ASP (methods/asp.py): one-shot 2:4 magnitude masks on the weights at construction,
then fine-tuning with the mask fixed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import regrow


def test_mask_keeps_the_two_largest_of_every_block_along_the_input_dim():
    lin = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([
            [0.1, -0.9, 0.3, 0.2, 5.0, 4.0, -3.0, 0.0],
            [-1.0, 1.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.7],   # ties at 1.0: lower index first
        ]))
    m = regrow.create("asp", nn.Sequential(lin), torch.optim.SGD(lin.parameters(), lr=0.1))
    expect = torch.tensor([
        [0, 1, 1, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    # the all-zero block [0, 0, 0, 0.7]: 0.7 then the lowest-index zero
    expect[1, 4] = True
    assert torch.equal(m.state.masks["0.weight"], expect)
    assert m.config.density == 0.5 and m.config.structure == "nm"


def test_mask_is_fixed_while_fine_tuning_and_blocks_hold_n():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    m = regrow.create("asp", model, opt, n=1, m=4)
    first = {n: k.clone() for n, k in m.state.masks.items()}
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(8, 4, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        m.step()
        for n, p in m.params.items():
            assert torch.equal(m.state.masks[n], first[n])
            assert torch.all(p.detach()[~first[n]] == 0)
            assert torch.all(first[n].movedim(1, -1).reshape(-1, 4).sum(1) == 1)


def test_only_nm_and_density_must_match():
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="structure"):
        regrow.create("asp", model, opt, structure="unstructured")
    with pytest.raises(ValueError, match="density"):
        regrow.create("asp", model, opt, density=0.3)
    with pytest.raises(ValueError, match="criterion"):
        regrow.create("asp", model, opt, criterion="taylor")   # no gradient at construction
