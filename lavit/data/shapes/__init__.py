"""ShapesWorld, the synthetic source the shipped model is trained on, in one package: the
procedural scenes and their renders (:mod:`.world`, re-exported here), the captions, questions
and prompts written from a scene (:mod:`.text`), the dataset that serves them as the data
layer's ``Sample`` (:mod:`.dataset`), the parser that reads a rendered or generated image back
into shapes (:mod:`.parser`), and the judges built on it (:mod:`.judge`). Nothing outside this
package and the data layer's source registry needs to know ShapesWorld exists: the training
stages reach its annotations (patch labels, focus masks, scene judges, synthesis parts) through
:mod:`lavit.data.annotations`.
"""

from lavit.data.shapes.world import (
    CELL_CENTRES,
    COLOURS,
    COLS,
    JITTER,
    KINDS,
    ROWS,
    SIZES,
    SPLITS,
    Scene,
    Shape,
    cell_name,
    check_shape_description,
    colour_hue,
    patch_labels,
    relation,
    render,
    sample_scene,
    scene_for_index,
    shape_mask,
    shape_matches,
    split_of,
)

__all__ = [
    "COLOURS",
    "KINDS",
    "SIZES",
    "CELL_CENTRES",
    "JITTER",
    "ROWS",
    "COLS",
    "SPLITS",
    "colour_hue",
    "Shape",
    "Scene",
    "cell_name",
    "relation",
    "split_of",
    "sample_scene",
    "scene_for_index",
    "render",
    "patch_labels",
    "shape_matches",
    "check_shape_description",
    "shape_mask",
]
