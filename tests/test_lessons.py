"""What the first teaching notebook shows, computed by the library on real nets and images."""

from __future__ import annotations

import torch
from conftest import tiny

from workbench import run_experiment
from workbench.ui import lessons


def test_each_local_loss_reaches_its_own_module_and_end_to_end_reaches_all(tmp_path):
    config = tiny(tmp_path, arch="resnet", n_units=3, n_modules=3)
    _, images, labels = lessons.test_images(config, 16)
    rows = lessons.gradient_reach(config, images, labels)
    assert [(r["training"], r["reaches"]) for r in rows] == [
        ("layer-wise", [1]), ("layer-wise", [2]), ("layer-wise", [3]), ("end-to-end", [1, 2, 3]),
    ]  # fmt: skip


def test_psi_splits_a_real_image_into_four_and_its_inverse_gives_it_back_exactly(tmp_path):
    pixels, _, _ = lessons.test_images(tiny(tmp_path), 1)
    image = pixels[0]  # a real digit, 1 x 32 x 32
    parts, back = lessons.psi_parts(image)
    assert parts.shape == (4, 1, 16, 16)
    assert torch.equal(back, image.float())
    assert torch.equal(parts[0, 0], image[0, ::2, ::2].float())  # top left of every 2x2 block
    assert torch.equal(parts[3, 0], image[0, 1::2, 1::2].float())  # bottom right


def test_a_finished_runs_blocks_have_a_kinetic_energy_each(tmp_path):
    config = tiny(tmp_path, arch="resnet", n_units=3, n_modules=3, method="parallel")
    assert run_experiment(config)["status"] == "finished"
    model = lessons.trained_model(config.out)
    saved = torch.load(f"{config.out}/checkpoints/module_2.pt", weights_only=True)["trunk"]
    assert all(torch.equal(v, model.trunk[1].state_dict()[k]) for k, v in saved.items())
    _, images, _ = lessons.test_images(config, 8)
    energies = lessons.block_energies(model, images)
    assert len(energies) == 3 and all(e > 0 for e in energies)  # one per residual block
