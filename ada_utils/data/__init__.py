"""Data: AbC-format benchmarks (the real AbC and the embedded stand-in), robust image decoding, contact sheets.

Heavy modules (matplotlib for sheets) load on first use of their names.
"""

from ada_utils.data.abc import (MissingFilesError, Model, Pool, TestCase, UnsafePathError, check_files, describe_root,
                                json_path, list_distractors, load_test_case, resolve, test_case_names,
                                training_pairs, unlabelled_pool)
from ada_utils.data.generate import benchmark_root, build_benchmark, default_root, ensure_benchmark
from ada_utils.data.images import ImageDecodeError, ImageListDataset, load_image, load_images, save_jpeg
from ada_utils.data.photos import PhotoSourceError, fetch_photos, gather_sources
from ada_utils.data.plan import SCALES, TEST_CASES, TRAIN_JSON

__all__ = [
    "SCALES", "TEST_CASES", "TRAIN_JSON", "ImageDecodeError", "ImageListDataset", "MissingFilesError", "Model",
    "PhotoSourceError", "Pool", "TestCase", "UnsafePathError", "benchmark_root", "build_benchmark", "describe_root",
    "check_files", "contact_sheet", "default_root", "ensure_benchmark", "fetch_photos", "gather_sources", "image_grid",
    "json_path", "list_distractors", "load_image", "load_images", "load_test_case", "resolve", "save_jpeg",
    "test_case_names", "training_pairs", "unlabelled_pool",
]


def __getattr__(name: str):
    """Lazy access to the matplotlib-based sheets (``contact_sheet``, ``image_grid``)."""
    if name in ("contact_sheet", "image_grid"):
        from ada_utils.data import sheets

        return getattr(sheets, name)
    raise AttributeError(f"module 'ada_utils.data' has no attribute {name!r}")
