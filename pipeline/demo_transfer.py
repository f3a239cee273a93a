"""The offline transfer-learning demo: CNN trained on digits 0-4 → features → classifier for 5-9."""

from pipeline.transfer import demo_add_arguments as add_arguments  # noqa: F401
from pipeline.transfer import demo_run as run  # noqa: F401
from pipeline.transfer import validate  # noqa: F401
