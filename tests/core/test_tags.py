"""Tag names shared by the tracking module and the pure rules."""

import ast
from pathlib import Path

from pipeline.core import promotion, tags, tracking

ROOT = Path(__file__).resolve().parents[2]


def test_the_rules_and_tracking_name_the_model_tag_alike():
    assert tracking.MODEL_URI_TAG == tags.MODEL_URI_TAG == "model.uri"
    assert promotion.MODEL_COLUMN == "tags.model.uri"


def test_the_promotion_rules_import_nothing_from_tracking():
    tree = ast.parse((ROOT / "pipeline/core/promotion.py").read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not [m for m in imported if m.startswith("pipeline.core.tracking")]
