"""`csd-fast demo`: train a small CSD model end to end on bundled photographs and show the result.

No data and no downloaded weights are needed: the photographs come from scikit-image's
wheel (or --data DIR), the VGG19 of the contrastive loss has random weights, and every
setting is sized so that the whole run takes minutes on a laptop CPU. Beside the CSD
student it trains the same student alone (L1 only) and times the exported slim student.
"""
from .photos import bundled_photos, user_photos
from .run import run_demo
from .settings import SCALE, STUDENT_WIDTH, DemoError, DemoSettings

__all__ = ["DemoError", "DemoSettings", "SCALE", "STUDENT_WIDTH", "bundled_photos", "run_demo",
           "user_photos"]
