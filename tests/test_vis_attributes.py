"""Pictures of instances with attribute scores: the top attributes are listed under the label."""

import numpy as np
import torch

from effdetmask.data.taxonomy import attribute_names, class_names
from effdetmask.vis import Visualizer, save_png


def _instances(with_scores: bool):
    masks = torch.zeros(1, 160, 240, dtype=torch.bool)
    masks[0, 40:150, 30:200] = True
    inst = {"boxes": torch.tensor([[30.0, 40, 200, 150]]), "scores": torch.tensor([0.9]),
            "classes": torch.tensor([0]), "masks": masks}
    if with_scores:
        scores = torch.zeros(1, 294)
        scores[0, [3, 100, 250, 7]] = torch.tensor([0.95, 0.8, 0.6, 0.4])  # 0.4: under 0.5
        inst["attribute_scores"] = scores
    return inst


def test_top_attributes_are_listed_under_the_class_name(tmp_path):
    names = attribute_names()
    vis = Visualizer(class_names(), attribute_names=names, max_attributes=3)
    lines = vis._attribute_lines(_instances(True)["attribute_scores"][0])
    assert lines == [f"{names[3]} 0.95", f"{names[100]} 0.80", f"{names[250]} 0.60"]
    image = np.full((160, 240, 3), 128, np.uint8)
    plain = vis.draw_instances(image, _instances(False))
    with_attrs = vis.draw_instances(image, _instances(True))
    rows = np.nonzero((plain != with_attrs).any(axis=(1, 2)))[0]
    # the attribute lines lie below the class label, from the box's top edge down
    assert len(rows) and rows.min() >= 40 and rows.max() < 100
    save_png(str(tmp_path / "attrs.png"), with_attrs)
    # no attribute names, or no scores: the picture of before
    assert np.array_equal(Visualizer(class_names()).draw_instances(image, _instances(True)),
                          plain)
    assert Visualizer(class_names(), attribute_names=names, max_attributes=1)._attribute_lines(
        _instances(True)["attribute_scores"][0]) == [f"{names[3]} 0.95"]
